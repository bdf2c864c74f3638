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


def training_command(
    family: str, algorithm: str, run_dir: Path, dataset: Path, seed: int, epochs: int, nproc: int, reward: str,
    overrides: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """The training command line (``torchrun`` when ``nproc > 1``)."""
    if family not in CONFIGS:
        raise ValueError(f"no toy world for family {family!r} yet; available: {sorted(CONFIGS)}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; available: {sorted(ALGORITHMS)}")
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
    return [*launcher, script, *flags, *REWARD_FLAGS[reward], *ALGORITHMS[algorithm], *overrides]


def train_in_toy_world(
    run_dir: Path, *, family: str = "qwen_image_edit", algorithm: str = "nft", seed: int = 0, epochs: int = 12,
    nproc: int = 1, reward: str = "judge", dataset: Path | None = None, overrides: Sequence[str] = (),
    timeout_s: float = 3600.0, eval_judge: Path | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train, then return the run's evaluations (:func:`edit_r1.toyworld.report.eval_curve`).

    ``eval_judge``: a judge folder served by a second server for the evaluation only
    (``EVAL_REWARD_SERVER``), so ``monitor/reward_gap`` compares the training judge with another."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    dataset = dataset or write_dataset(run_dir.parent / "toyworld_data")
    command = training_command(family, algorithm, run_dir, dataset, seed, epochs, nproc, reward, overrides)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}
    env.setdefault("OMP_NUM_THREADS", "1")
    with contextlib.ExitStack() as stack:
        rule_only_eval = any(o.startswith("--config.eval_reward_fn") and "mllm" not in o for o in overrides)
        if not reward.startswith("rule") or not rule_only_eval:
            judge = {"pairwise": PAIRWISE_JUDGE_DIR, "judge_blind": BLIND_JUDGE_DIR}.get(reward, JUDGE_DIR)
            env["REWARD_SERVER"] = stack.enter_context(
                judge_server(run_dir.parent / f"{run_dir.name}_server.log", judge)
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
