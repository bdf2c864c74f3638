"""The ``learning`` scenario of ``scripts/benchmark.py``: how fast an RL algorithm improves the toy editor.

    python scripts/benchmark.py learning [--family qwen_image_edit] [--algorithm nft,grpo] [--seeds 0,1,2]
        [--reward judge|rule|pairwise] [--metric judge|rule] [--epochs 13] [--eval-every 2] [--nproc 1]
        [--jobs 1] [--set KEY=VALUE ...] [--eval-judge judge|judge_blind|pairwise]
        [--target 0.40 | --gain 0.10] [--json out.json] [--plot curves.png]
        [--plot-x samples|forwards|seconds] [--recipe shared|own]

For each seed, trains the committed toy-world editor (``docs/toyworld.md``) with the ``:toy``
config, rewarded by ``--reward`` (the toy judge's score behind a real reward server, the rule
score, or the judge's pairwise preferences), and reads the held-out evaluations: judge reward and
rule score against samples seen (rollouts generated so far), the transformer forwards spent on
training (rollouts and update, the trainer's ``cost/transformer_forwards``) and wall time. Prints the
curve averaged over seeds and, per seed, the samples, forwards and seconds until the held-out
``--metric`` first reaches ``--target`` (or, with ``--gain``, its own epoch-0 score plus the gain: the
held-out scores of the base editor differ from seed to seed, since the evaluation noise follows the
seed). ``--json`` writes every curve and each algorithm's
medians to the target (``median_reach_target``), ``--plot`` a PNG of the curves (against
``--plot-x``). With several algorithms (``--algorithm nft,grpo``) each is run on the same
seeds and a comparison closes the report: the median samples, forwards and seconds to the target
per algorithm, and each later algorithm's forwards and seconds as a multiple of the first's;
``--jobs 2`` trains two algorithms at the same time (one core each on a 2-core machine), so their
seconds compare. ``--recipe own`` rolls each algorithm out with its own published recipe where they
differ (``OWN_RECIPES`` in ``edit_r1/toyworld/learning.py``, with the sources of its numbers);
evaluation stays the same for every recipe, so the scores compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edit_r1.toyworld.learning import (  # noqa: E402
    ALGORITHMS,
    BLIND_JUDGE_DIR,
    CONFIGS,
    JUDGE_DIR,
    PAIRWISE_JUDGE_DIR,
    RECIPE_NOTES,
    RECIPES,
    REWARD_FLAGS,
    LearningRunError,
    train_in_toy_world,
    write_dataset,
)
from edit_r1.toyworld.report import judge_calls_per_epoch  # noqa: E402

EVAL_JUDGES = {"judge": JUDGE_DIR, "judge_blind": BLIND_JUDGE_DIR, "pairwise": PAIRWISE_JUDGE_DIR}
X_AXES = {
    "samples": "rollouts seen",
    "forwards": "transformer forwards spent on training",
    "seconds": "seconds",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark.py learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--family", default="qwen_image_edit", choices=sorted(CONFIGS))
    parser.add_argument(
        "--algorithm", default="nft", help=f"comma-separated algorithms among {sorted(ALGORITHMS)}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--reward", default="judge", choices=sorted(REWARD_FLAGS), help="training reward")
    parser.add_argument(
        "--metric",
        choices=["judge", "rule"],
        help="held-out score of the target (default: rule for --reward rule)",
    )
    parser.add_argument("--epochs", type=int, default=13, help="epochs per seed (evaluated at their start)")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between held-out evaluations")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (torchrun when > 1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="algorithms trained at the same time, each with its own reward server (default 1)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run, e.g. \"reward_fn={'mllm_score_continue': 1.0, "
        "'source_consistency': 0.3}\" (passed as --config.KEY=VALUE, after the reward's own flags)",
    )
    parser.add_argument(
        "--eval-judge",
        choices=sorted(EVAL_JUDGES),
        help="evaluate with this judge on a second server (EVAL_REWARD_SERVER) instead of the training "
        "judge, so monitor/reward_gap compares the two (docs/training.md)",
    )
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="shared",
        help="shared: every algorithm rolls out with the :toy settings (4 steps, no CFG); own: each with "
        "its own published rollout recipe where they differ (Flow-GRPO: 10 SDE steps and true CFG 4.5 "
        "in rollouts and training forwards; DiffusionNFT: the :toy settings); evaluation is the same",
    )
    add_target_and_output_arguments(parser)
    return parser


def add_target_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What the report measures to (``--target`` or ``--gain``) and where it writes (``--out``,
    ``--json``, ``--plot``, ``--plot-x``)."""
    parser.add_argument(
        "--target", type=float, default=0.40, help="held-out score to reach (0.40: above both base editors)"
    )
    parser.add_argument(
        "--gain",
        type=float,
        help="instead of --target: each seed's target is its own epoch-0 held-out score plus this gain",
    )
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the result object here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the held-out curves here")
    parser.add_argument(
        "--plot-x", choices=sorted(X_AXES), default="samples", help="the plot's x axis (default samples)"
    )


def samples_per_epoch(family: str = "qwen_image_edit") -> int:
    from edit_r1.config import load_config

    family_config = CONFIGS[family][0]
    sample = load_config(str(Path(__file__).resolve().parents[1] / family_config)).sample
    return int(sample.num_groups_per_epoch * sample.num_image_per_prompt)


def reach(curve: list[dict], target: float, per_epoch: int, metric: str = "judge") -> dict | None:
    """Samples seen, training's transformer forwards (rollouts and update, all ranks; None for a
    run logged without them) and seconds before the first evaluation with ``metric`` >= target
    (None: never reached)."""
    for point in curve:
        if point[metric] is not None and point[metric] >= target:
            return {
                "samples": point["epoch"] * per_epoch,
                "forwards": point.get("forwards"),
                "seconds": round(point["seconds"], 1),
            }
    return None


def seed_target(curve: list[dict], args: argparse.Namespace) -> float:
    """``args.target``, or with ``args.gain`` the run's epoch-0 ``args.metric`` plus the gain."""
    gain = getattr(args, "gain", None)
    return args.target if gain is None else curve[0][args.metric] + gain


def target_text(result: dict) -> str:
    """How the report names the target: ``>= 0.4`` or ``>= epoch 0 + 0.1``."""
    gain = result.get("gain")
    return f">= {result['target']}" if gain is None else f">= epoch 0 + {gain}"


def evaluation_overrides(args: argparse.Namespace) -> list[str]:
    """Evaluate every ``--eval-every`` epochs; a rule-reward run scored by the rule needs no judge;
    then the ``--set`` overrides."""
    overrides = [f"--config.eval_freq={args.eval_every}"]
    if args.reward == "rule" and args.metric == "rule":
        overrides.append(
            "--config.eval_reward_fn={'toy_edit': 1.0, 'toy_edit_success': 0.0, 'toy_edit_preservation': 0.0}"
        )
    return overrides + [f"--config.{setting}" for setting in args.set]


def run(args: argparse.Namespace, root: Path, dataset: Path | None = None) -> dict:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    per_epoch = samples_per_epoch(args.family)
    runs = {}
    recipe = getattr(args, "recipe", "shared")
    note = RECIPE_NOTES.get((args.family, args.algorithm)) if recipe == "own" else None
    if note:
        print(f"note: {note}", flush=True)
    for seed in seeds:
        run_dir = root / f"{args.algorithm}_{args.reward}{'_own' if recipe == 'own' else ''}_seed{seed}"
        curve = train_in_toy_world(
            run_dir, family=args.family, algorithm=args.algorithm,
            seed=seed, epochs=args.epochs, nproc=args.nproc, reward=args.reward,
            overrides=evaluation_overrides(args), dataset=dataset, recipe=recipe,
            eval_judge=EVAL_JUDGES[args.eval_judge] if args.eval_judge else None,
        )  # fmt: skip
        for point in curve:
            point["samples"] = point["epoch"] * per_epoch
        target = seed_target(curve, args)
        runs[seed] = {
            "curve": curve,
            "target": target,
            "reach_target": reach(curve, target, per_epoch, args.metric),
            "pairwise_judge_calls_per_epoch": judge_calls_per_epoch(run_dir),
        }
        print(f"seed {seed}: {args.metric} " + " ".join(f"{p[args.metric]:.3f}" for p in curve), flush=True)
    return {
        "scenario": "learning", "family": args.family, "algorithm": args.algorithm, "reward": args.reward,
        "recipe": recipe, "recipe_note": note, "metric": args.metric, "target": args.target,
        "gain": getattr(args, "gain", None), "samples_per_epoch": per_epoch, "runs": runs,
    }  # fmt: skip


def mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def format_table(result: dict) -> str:
    runs = list(result["runs"].values())
    length = min(len(r["curve"]) for r in runs)
    lines = [
        f"learning ({result['family']}, {result['algorithm']}, reward {result.get('reward', 'judge')}, "
        f"recipe {result.get('recipe', 'shared')}, {len(runs)} seeds): held-out mean over seeds"
    ]
    if result.get("recipe_note"):
        lines.append(f"note: {result['recipe_note']}")
    lines.append(f"{'epoch':>6} {'samples':>8} {'forwards':>9} {'seconds':>8} {'judge':>7} {'rule':>7}")
    for i in range(length):
        points = [r["curve"][i] for r in runs]
        keys = ("samples", "forwards", "seconds", "judge", "rule")
        mean = {k: mean_or_none([p.get(k) for p in points]) for k in keys}
        cells = " ".join(f"{'-':>7}" if mean[k] is None else f"{mean[k]:>7.3f}" for k in ("judge", "rule"))
        forwards = f"{'-':>9}" if mean["forwards"] is None else f"{mean['forwards']:>9.0f}"
        lines.append(
            f"{points[0]['epoch']:>6} {mean['samples']:>8.0f} {forwards} {mean['seconds']:>8.0f} {cells}"
        )
    calls = [r.get("pairwise_judge_calls_per_epoch", 0.0) for r in runs]
    if any(calls):
        lines.append(f"pairwise judge calls per epoch (mean): {sum(calls) / len(calls):.0f}")
    for seed, r in result["runs"].items():
        hit = r["reach_target"]
        where = f"{hit['samples']} samples, {forwards_text(hit)}{hit['seconds']} s" if hit else "not reached"
        lines.append(f"seed {seed}: held-out {result.get('metric', 'judge')} {target_text(result)}: {where}")
    return "\n".join(lines)


def forwards_text(hit: dict) -> str:
    """``"<n> forwards, "`` when the run counted them, else nothing."""
    return f"{hit['forwards']} forwards, " if hit.get("forwards") is not None else ""


def median_reach(result: dict) -> dict | None:
    """Median samples, forwards and seconds to the target over the seeds that reached it, each
    median taken on its own (None: no seed reached it; forwards None when a run did not count them).
    The median of an even count is the upper middle value, as for samples."""
    hits = [r["reach_target"] for r in result["runs"].values() if r["reach_target"]]
    if not hits:
        return None
    middle = len(hits) // 2
    samples, seconds = sorted(h["samples"] for h in hits), sorted(h["seconds"] for h in hits)
    counted = [h.get("forwards") for h in hits]
    forwards = None if None in counted else sorted(counted)[middle]
    return {
        "samples": samples[middle],
        "forwards": forwards,
        "seconds": seconds[middle],
        "reached": len(hits),
    }


def format_comparison(results: dict[str, dict]) -> str:
    first = next(iter(results.values()))
    lines = [
        f"comparison: held-out {first.get('metric', 'judge')} {target_text(first)} "
        f"(recipe {first.get('recipe', 'shared')})"
    ]
    for name, result in results.items():
        hit = median_reach(result)
        seeds = len(result["runs"])
        where = (
            f"median {hit['samples']} samples, {forwards_text(hit)}{hit['seconds']} s "
            f"({hit['reached']}/{seeds} seeds)"
            if hit
            else f"not reached (0/{seeds} seeds)"
        )
        lines.append(f"  {name}: {where}")
    lines.extend(cost_ratios(results))
    return "\n".join(lines)


def cost_ratios(results: dict[str, dict]) -> list[str]:
    """Each later algorithm's median forwards and seconds to the target over the first one's (the
    x-fold claim's two measures); nothing when either did not reach it, did not count forwards, or
    reached it before any training (no ratio to or of a cost of 0)."""
    names = list(results)
    base = median_reach(results[names[0]])
    lines = []
    for name in names[1:]:
        other = median_reach(results[name])
        if base is None or other is None or None in (base["forwards"], other["forwards"]):
            continue
        if not (base["forwards"] and base["seconds"] and other["forwards"]):
            continue
        forwards, seconds = other["forwards"] / base["forwards"], other["seconds"] / base["seconds"]
        lines.append(f"  {name} / {names[0]}: {forwards:.2f}x the forwards, {seconds:.2f}x the seconds")
    return lines


def plot_curves(results: dict[str, dict], path: Path, x: str = "samples") -> None:
    """One line per algorithm (mean over seeds, thin: each seed) of the held-out metric against
    ``x``: samples, training's transformer forwards or seconds (the mean curve at the seeds' mean x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (name, result) in enumerate(results.items()):
        color = f"C{index}"
        metric, curves = result["metric"], [r["curve"] for r in result["runs"].values()]
        for curve in curves:
            axis.plot([p[x] for p in curve], [p[metric] for p in curve], color=color, alpha=0.25, lw=1)
        length = min(len(c) for c in curves)
        mean = [sum(c[i][metric] for c in curves) / len(curves) for i in range(length)]
        at = [sum(c[i][x] for c in curves) / len(curves) for i in range(length)]
        axis.plot(at, mean, color=color, lw=2.5, label=name)
    if first_result(results).get("gain") is None:  # a gain sets one target per seed: no single line
        axis.axhline(first_result(results)["target"], color="gray", ls="--", lw=1, label="target")
    axis.set_xlabel(X_AXES[x])
    axis.set_ylabel(f"held-out {first_result(results)['metric']} score")
    axis.set_title(f"toy world, reward {first_result(results)['reward']}, {len(curves)} seeds")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def first_result(results: dict[str, dict]) -> dict:
    return next(iter(results.values()))


def run_algorithms(args: argparse.Namespace, algorithms: list[str], root: Path) -> dict[str, dict]:
    """Each algorithm's :func:`run` (``args.jobs`` at a time, so that side-by-side runs share the
    machine alike and their seconds compare); prints each table as it completes. The dataset is
    written once, before any run starts."""
    from concurrent.futures import ThreadPoolExecutor

    dataset = write_dataset(root / "toyworld_data")

    def one(name: str) -> dict:
        result = run(argparse.Namespace(**{**vars(args), "algorithm": name}), root, dataset)
        print(format_table(result), flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(one, name) for name in algorithms}
        return {name: future.result() for name, future in futures.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.metric = args.metric or ("rule" if args.reward == "rule" else "judge")
    algorithms = [name.strip() for name in args.algorithm.split(",") if name.strip()]
    unknown = sorted(set(algorithms) - set(ALGORITHMS)) or ([] if algorithms else ["(none)"])
    if unknown:
        print(
            f"benchmark learning: unknown --algorithm {unknown}; available: {sorted(ALGORITHMS)}",
            file=sys.stderr,
        )
        return 2
    if args.jobs < 1:
        print(f"benchmark learning: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    if args.gain is not None and args.gain <= 0:
        print(
            f"benchmark learning: --gain must be > 0 (a gain over epoch 0), got {args.gain}", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            results = run_algorithms(args, algorithms, args.out or Path(tmp))
        except (LearningRunError, ValueError) as error:
            print(f"benchmark learning: {error}", file=sys.stderr)
            return 2
    for result in results.values():  # the medians of the comparison line, in the --json too
        result["median_reach_target"] = median_reach(result)
    if len(results) > 1:
        print(format_comparison(results))
    if args.plot:
        plot_curves(results, args.plot, args.plot_x)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = (
            results[algorithms[0]] if len(results) == 1 else {"scenario": "learning", "algorithms": results}
        )
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
