"""Run an RL algorithm in the toy world and read its held-out learning curve.

Used by ``make demo``'s numbers, ``scripts/benchmark.py learning`` and the learning regression
test: :func:`train_in_toy_world` launches the real training script on the ``:toy`` config (one
process, or ``torchrun`` with gloo for ``nproc > 1``) against either the toy judge behind a real
reward server (``reward="judge"``), the rule reward (``reward="rule"``, no server) or the pairwise
preferences of the toy judge taught that question (``reward="pairwise"``, the ``pairwise_mllm``
reward; that judge also gives the held-out judge reward of such a run), and returns
the evaluations of ``metrics.jsonl`` (:func:`edit_r1.toyworld.report.eval_curve`).

To try an algorithm change on a laptop: change the code, then compare
``python scripts/benchmark.py learning --seeds 0,1,2`` before and after (``docs/toyworld.md``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edit_r1.toyworld import CHECKPOINTS, world
from edit_r1.toyworld.report import eval_curve
from reward_server.launcher import RewardServerStartError, launch_reward_server

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "qwen_image_edit": ("config/qwen_image_edit_nft.py:toy", "scripts/train_nft_qwen_image_edit.py"),
    "kontext": ("config/kontext_nft.py:toy", "scripts/train_nft_kontext.py"),
}
# Config overrides per algorithm; a new algorithm adds its line (e.g. its `config.algorithm`).
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "nft": (),
    # Flow-GRPO (docs/algorithm.md section 9) on the same rollout budget: its SDE, clip range, KL
    # weight and two optimizer steps per epoch; the toy config's step count and group size stay.
    "grpo": (
        "--config.algorithm=grpo",
        "--config.sample.solver=flow",
        "--config.sample.deterministic=False",
        "--config.sample.noise_level=0.7",
        "--config.train.beta=0.04",
        "--config.train.clip_range=0.0001",
        "--config.train.gradient_step_per_epoch=2",
    ),  # fmt: skip
}
# Each algorithm's own published rollout recipe where the two differ (``--recipe own`` of
# ``scripts/benchmark.py learning``), on top of its ALGORITHMS line, per family. ``shared`` (the
# default) is ALGORITHMS alone: both algorithms roll out in the :toy config's 4 steps without CFG.
# Evaluation is never touched: the same held-out items, 4 Euler steps and no CFG for every recipe
# (sample.eval_true_cfg=False keeps CFG rollouts out of it), so the scores compare.
# * DiffusionNFT (NVlabs/DiffusionNFT at 24af555, config/nft.py:64-66): CFG-free (guidance_scale
#   1.0), deterministic, solver dpm2. Its SD3.5 recipes take 10 steps (:20; 25 for multi_reward,
#   :136); Edit-R1 ships 6 (config_keys sample.num_steps) and the toy 4: the :toy settings are that
#   recipe, unchanged.
# * Flow-GRPO (yifan123/flow_grpo at ac4c86e, config/base.py, config/grpo.py geneval_sd3): the flow
#   SDE with eta 0.7 (base.py:54, in ALGORITHMS already), 10 sampling steps of which int(10 * 0.99)
#   = 9 are trained (grpo.py:76 and :90; the toy's train.timestep_fraction is 0.99 too), CFG 4.5
#   (grpo.py:78) in the rollouts and in the re-scoring training forwards (train.cfg = True,
#   base.py:82). Qwen's true CFG (negative prompt "") is that CFG; FLUX.1-Kontext has no true CFG
#   (its guidance is an embedded input), so its Flow-GRPO recipe is the SDE and the 10 steps only.
FLOW_GRPO_STEPS = ("--config.sample.num_steps=10",)
FLOW_GRPO_CFG = (
    "--config.sample.true_cfg_scale=4.5", "--config.train.cfg=True", "--config.sample.eval_true_cfg=False",
)  # fmt: skip
OWN_RECIPES: dict[str, dict[str, tuple[str, ...]]] = {
    "nft": {family: () for family in CONFIGS},
    "grpo": {"qwen_image_edit": FLOW_GRPO_STEPS + FLOW_GRPO_CFG, "kontext": FLOW_GRPO_STEPS},
}
RECIPES = ("shared", "own")
# What a reader must know of a recipe that cannot be run as published.
RECIPE_NOTES = {("kontext", "grpo"): "FLUX.1-Kontext has no true CFG: Flow-GRPO's own recipe runs without it"}
JUDGE_DIR = CHECKPOINTS / "judge_qwen2_5_vl"
# The judge of the earlier toy world, trained on the preservation-blind rule (docs/toyworld.md).
BLIND_JUDGE_DIR = CHECKPOINTS / "judge_qwen2_5_vl_blind"
# The judge taught the pairwise question as well (docs/toyworld.md); the pointwise judge never was.
PAIRWISE_JUDGE_DIR = CHECKPOINTS / "judge_qwen2_5_vl_pairwise"
# The training reward: the judge's pointwise score through the server, the rule (no server for
# training), or the judge's pairwise preferences within each group (Pref-GRPO's reward).
# "rule_blind" / "judge_blind": the preservation-blind rule and the judge trained on it (the
# erasable reward of the earlier toy world, kept to show what rewarding it does).
REWARD_FLAGS: dict[str, tuple[str, ...]] = {
    "judge": (),
    "rule": ("--config.reward_fn={'toy_edit': 1.0}",),  # a ConfigDict field takes a dict literal
    "pairwise": ("--config.reward_fn={'pairwise_mllm': 1.0}",),
    "rule_blind": ("--config.reward_fn={'toy_color': 1.0}",),
    "judge_blind": (),
}


class LearningRunError(RuntimeError):
    """The training run or its reward server failed (the message quotes the log)."""


def write_dataset(out: Path, num_train: int = 256, num_test: int = 32) -> Path:
    """The toy-world dataset of the ``:toy`` config (same as ``make demo``'s: ``world.write_rl_dataset``)."""
    return world.write_rl_dataset(out, num_train, num_test)


@contextlib.contextmanager
def judge_server(log: Path, judge: Path = JUDGE_DIR, timeout_s: float = 180.0) -> Iterator[str]:
    """The reward server with the toy judge on a free loopback port; yields ``host:port``."""
    extra_args = ("--template", world.JUDGE_TEMPLATE)
    try:
        with launch_reward_server(judge, 64, "cpu", log, extra_args, timeout_s) as address:
            yield address
    except RewardServerStartError as error:
        raise LearningRunError(str(error)) from error


def recipe_flags(family: str, algorithm: str, recipe: str) -> tuple[str, ...]:
    """The flags ``recipe`` adds to ``algorithm``'s ALGORITHMS line: none for ``shared``, the
    algorithm's own published rollout recipe (``OWN_RECIPES``) for ``own``."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {recipe!r}")
    if recipe == "shared":
        return ()
    if algorithm not in OWN_RECIPES:
        raise ValueError(f"no own recipe for algorithm {algorithm!r}; available: {sorted(OWN_RECIPES)}")
    return OWN_RECIPES[algorithm][family]


def training_command(
    family: str, algorithm: str, run_dir: Path, dataset: Path, seed: int, epochs: int, nproc: int, reward: str,
    overrides: Sequence[str] = (), recipe: str = "shared",
) -> list[str]:  # fmt: skip
    """The training command line (``torchrun`` when ``nproc > 1``): the ``:toy`` config, the run's
    flags, the reward's, the algorithm's, the ``recipe``'s (:func:`recipe_flags`), then ``overrides``."""
    if family not in CONFIGS:
        raise ValueError(f"no toy world for family {family!r} yet; available: {sorted(CONFIGS)}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; available: {sorted(ALGORITHMS)}")
    recipe_line = recipe_flags(family, algorithm, recipe)
    config, script = CONFIGS[family]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    flags = [
        f"--config={config}", f"--config.logdir={run_dir.parent}", f"--config.run_name={run_dir.name}",
        f"--config.dataset={dataset}", f"--config.seed={seed}", f"--config.num_epochs={epochs}",
        f"--config.save_freq={epochs}",
    ]  # fmt: skip
    if reward not in REWARD_FLAGS:
        raise ValueError(f"reward must be one of {sorted(REWARD_FLAGS)}, got {reward!r}")
    return [
        *launcher,
        script,
        *flags,
        *REWARD_FLAGS[reward],
        *ALGORITHMS[algorithm],
        *recipe_line,
        *overrides,
    ]


def train_in_toy_world(
    run_dir: Path, *, family: str = "qwen_image_edit", algorithm: str = "nft", seed: int = 0, epochs: int = 12,
    nproc: int = 1, reward: str = "judge", dataset: Path | None = None, overrides: Sequence[str] = (),
    timeout_s: float = 3600.0, eval_judge: Path | None = None, recipe: str = "shared", judge: Path | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train, then return the run's evaluations (:func:`edit_r1.toyworld.report.eval_curve`).

    ``eval_judge``: a judge folder served by a second server for the evaluation only
    (``EVAL_REWARD_SERVER``), so ``monitor/reward_gap`` compares the training judge with another;
    ``recipe``: ``shared`` or ``own`` (:func:`recipe_flags`); ``judge``: the judge folder the
    server serves (default: the reward's committed judge)."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    dataset = dataset or write_dataset(run_dir.parent / "toyworld_data")
    command = training_command(
        family, algorithm, run_dir, dataset, seed, epochs, nproc, reward, overrides, recipe
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}
    env.setdefault("OMP_NUM_THREADS", "1")
    with contextlib.ExitStack() as stack:
        rule_only_eval = any(o.startswith("--config.eval_reward_fn") and "mllm" not in o for o in overrides)
        if not reward.startswith("rule") or not rule_only_eval:
            served = judge or {"pairwise": PAIRWISE_JUDGE_DIR, "judge_blind": BLIND_JUDGE_DIR}.get(
                reward, JUDGE_DIR
            )
            env["REWARD_SERVER"] = stack.enter_context(
                judge_server(run_dir.parent / f"{run_dir.name}_server.log", Path(served))
            )
        if eval_judge is not None:
            env["EVAL_REWARD_SERVER"] = stack.enter_context(
                judge_server(run_dir.parent / f"{run_dir.name}_eval_server.log", Path(eval_judge))
            )
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    if result.returncode != 0:
        raise LearningRunError(
            f"training exited with {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    return eval_curve(run_dir)
