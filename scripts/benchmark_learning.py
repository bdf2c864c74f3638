"""The ``learning`` scenario of ``scripts/benchmark.py``: how fast an RL algorithm improves the toy editor.

    python scripts/benchmark.py learning [--family qwen_image_edit] [--algorithm nft,grpo] [--seeds 0,1,2]
        [--epochs 12] [--nproc 1] [--target 0.6] [--json out.json]

For each seed, trains the committed toy-world editor (``docs/toyworld.md``) with the ``:toy``
config against the toy judge behind a real reward server and reads the held-out evaluations:
judge reward and rule score against samples seen (rollouts generated so far) and wall time.
Prints the curve averaged over seeds and, per seed, the samples seen (and seconds) until the
held-out judge reward first reaches ``--target``. ``--json`` writes every curve. With several
algorithms (``--algorithm nft,grpo``) each is run on the same seeds and a comparison line closes the
report: the median samples and seconds to the target per algorithm.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edit_r1.toyworld.learning import ALGORITHMS, CONFIGS, LearningRunError, train_in_toy_world  # noqa: E402


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
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per seed")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (torchrun when > 1)")
    parser.add_argument("--target", type=float, default=0.6, help="held-out judge reward to reach")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the result object here")
    return parser


def samples_per_epoch() -> int:
    from edit_r1.config import load_config

    family_config = CONFIGS["qwen_image_edit"][0]
    sample = load_config(str(Path(__file__).resolve().parents[1] / family_config)).sample
    return int(sample.num_groups_per_epoch * sample.num_image_per_prompt)


def reach(curve: list[dict], target: float, per_epoch: int) -> dict | None:
    """Samples seen and seconds at the first evaluation with judge reward >= target (None: never)."""
    for point in curve:
        if point["judge"] >= target:
            return {"samples": point["epoch"] * per_epoch, "seconds": round(point["seconds"], 1)}
    return None


def run(args: argparse.Namespace, root: Path) -> dict:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    per_epoch = samples_per_epoch()
    runs = {}
    for seed in seeds:
        curve = train_in_toy_world(
            root / f"{args.algorithm}_seed{seed}", family=args.family, algorithm=args.algorithm, seed=seed,
            epochs=args.epochs, nproc=args.nproc,
        )  # fmt: skip
        for point in curve:
            point["samples"] = point["epoch"] * per_epoch
        runs[seed] = {"curve": curve, "reach_target": reach(curve, args.target, per_epoch)}
        print(f"seed {seed}: judge " + " ".join(f"{p['judge']:.3f}" for p in curve), flush=True)
    return {
        "scenario": "learning", "family": args.family, "algorithm": args.algorithm, "target": args.target,
        "samples_per_epoch": per_epoch, "runs": runs,
    }  # fmt: skip


def format_table(result: dict) -> str:
    runs = list(result["runs"].values())
    length = min(len(r["curve"]) for r in runs)
    lines = [
        f"learning ({result['family']}, {result['algorithm']}, {len(runs)} seeds): held-out mean over seeds"
    ]
    lines.append(f"{'epoch':>6} {'samples':>8} {'seconds':>8} {'judge':>7} {'rule':>7}")
    for i in range(length):
        points = [r["curve"][i] for r in runs]
        mean = {k: sum(p[k] for p in points) / len(points) for k in ("samples", "seconds", "judge", "rule")}
        lines.append(
            f"{points[0]['epoch']:>6} {mean['samples']:>8.0f} {mean['seconds']:>8.0f} {mean['judge']:>7.3f} {mean['rule']:>7.3f}"
        )
    for seed, r in result["runs"].items():
        hit = r["reach_target"]
        where = f"{hit['samples']} samples, {hit['seconds']} s" if hit else "not reached"
        lines.append(f"seed {seed}: judge reward >= {result['target']}: {where}")
    return "\n".join(lines)


def median_reach(result: dict) -> dict | None:
    """Median samples and seconds to the target over the seeds that reached it (None: none did)."""
    hits = [r["reach_target"] for r in result["runs"].values() if r["reach_target"]]
    if not hits:
        return None
    middle = len(hits) // 2
    samples, seconds = sorted(h["samples"] for h in hits), sorted(h["seconds"] for h in hits)
    return {"samples": samples[middle], "seconds": seconds[middle], "reached": len(hits)}


def format_comparison(results: dict[str, dict]) -> str:
    lines = [f"comparison: held-out judge reward >= {next(iter(results.values()))['target']}"]
    for name, result in results.items():
        hit = median_reach(result)
        seeds = len(result["runs"])
        where = (
            f"median {hit['samples']} samples, {hit['seconds']} s ({hit['reached']}/{seeds} seeds)"
            if hit
            else f"not reached (0/{seeds} seeds)"
        )
        lines.append(f"  {name}: {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    algorithms = [name.strip() for name in args.algorithm.split(",") if name.strip()]
    unknown = sorted(set(algorithms) - set(ALGORITHMS)) or ([] if algorithms else ["(none)"])
    if unknown:
        print(
            f"benchmark learning: unknown --algorithm {unknown}; available: {sorted(ALGORITHMS)}",
            file=sys.stderr,
        )
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for name in algorithms:
            try:
                results[name] = run(argparse.Namespace(**{**vars(args), "algorithm": name}), root)
            except (LearningRunError, ValueError) as error:
                print(f"benchmark learning: {error}", file=sys.stderr)
                return 2
            print(format_table(results[name]), flush=True)
    if len(results) > 1:
        print(format_comparison(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = (
            results[algorithms[0]] if len(results) == 1 else {"scenario": "learning", "algorithms": results}
        )
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
