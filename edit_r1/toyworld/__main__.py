"""CLI: ``python -m edit_r1.toyworld build --out DIR [--stage vae|editor|editor_partial|judge|judge_pairwise ...] [--seed N] [--family F]``,
``python -m edit_r1.toyworld data --out DIR [--train 256] [--test 32]`` (the ``:toy`` RL dataset),
``python -m edit_r1.toyworld evaluate-judge --judge DIR [--editor DIR]`` (a judge's held-out numbers),
``python -m edit_r1.toyworld policy-judge --test-policy DIR ... [--train-policy DIR ... --out DIR]``
(a judge on RL policies' edits, fine-tuned on them with ``--out``),
``python -m edit_r1.toyworld rollout-groups [--policy DIR] [--judge DIR]`` (within-group order of a
policy's rollouts, :mod:`edit_r1.toyworld.rollout_groups`),
``python -m edit_r1.toyworld recolour-binding [--policy DIR]`` (which shape a policy colours,
:mod:`edit_r1.toyworld.binding`) and
``python -m edit_r1.toyworld report RUN_DIR``."""

from __future__ import annotations

import argparse
import os
import time

from edit_r1.toyworld.build import FAMILIES, STAGES, build, resolve_stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edit_r1.toyworld", description="Build the toy world.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("build", help="train the VAE, the base editor and the judge")
    command.add_argument("--out", required=True, help="directory of the checkpoint folders and toyworld.json")
    command.add_argument(
        "--stage", action="append", choices=STAGES, help="run only this stage (repeatable; default all)"
    )
    command.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0)")
    command.add_argument(
        "--family",
        default="qwen_image_edit",
        choices=FAMILIES,
        help="the editor's family (the judge is shared)",
    )
    data = commands.add_parser("data", help="write the RL dataset of the :toy configs (with VAE references)")
    data.add_argument("--out", required=True, help="dataset directory (created if missing)")
    data.add_argument("--train", type=int, default=256, help="train items (default 256)")
    data.add_argument("--test", type=int, default=32, help="test items (default 32)")
    judge = commands.add_parser(
        "evaluate-judge", help="a judge folder's held-out numbers, as the build measures them"
    )
    judge.add_argument(
        "--judge", required=True, help="judge folder (Qwen2.5-VL, e.g. checkpoints/judge_qwen2_5_vl_blind)"
    )
    judge.add_argument("--editor", default=None, help="base editor folder (default: the committed one)")
    _add_policy_judge(commands)
    _add_rollout_groups(commands)
    _add_recolour_binding(commands)
    report = commands.add_parser("report", help="judge reward and rule score of a run, before and after")
    report.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    args = parser.parse_args(argv)
    if args.command == "report":
        from edit_r1.toyworld.report import summary

        print(summary(args.run_dir))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "data":
        from edit_r1.toyworld.world import write_rl_dataset

        print(f"wrote the toy world's RL dataset to {write_rl_dataset(args.out, args.train, args.test)}")
        return
    if args.command == "evaluate-judge":
        _evaluate_judge(args.judge, args.editor)
        return
    runners = {"policy-judge": _policy_judge, "rollout-groups": _rollout_groups, "recolour-binding": _binding}
    if args.command in runners:
        runners[args.command](args)
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    start = time.perf_counter()
    try:
        stages = resolve_stages(args.family, tuple(args.stage) if args.stage else None)
    except ValueError as error:  # a stage the family does not have: a usage error, not a traceback
        parser.error(str(error))
    out = build(args.out, stages, seed=args.seed, family=args.family)
    print(f"toy world in {out} ({time.perf_counter() - start:.0f} s)")


def _evaluate_judge(judge_dir: str, editor_dir: str | None) -> None:
    """Print the held-out Spearmans and hard-negative shares of ``judge_dir`` as JSON."""
    import json

    from edit_r1.toyworld import CHECKPOINTS
    from edit_r1.toyworld.build import QWEN_DIR
    from edit_r1.toyworld.judge import JudgeTraining, evaluate_judge

    editor = editor_dir or CHECKPOINTS / QWEN_DIR
    print(json.dumps(evaluate_judge(judge_dir, editor, JudgeTraining()), indent=2, sort_keys=True))


def _print_json(result: dict, path: str | None) -> None:
    """Print ``result`` as JSON; with ``path`` (``--json``) also write it there."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2, sort_keys=True)
    if path:
        Path(path).write_text(text + "\n")
    print(text)


def _add_policy_judge(commands) -> None:
    command = commands.add_parser(
        "policy-judge", help="a judge on the edits of RL-trained policies; fine-tuned on them with --out"
    )
    command.add_argument(
        "--judge", default=None, help="judge folder (default: the committed judge_qwen2_5_vl)"
    )
    command.add_argument("--editor", default=None, help="base editor folder (default: the committed one)")
    command.add_argument(
        "--test-policy",
        action="append",
        required=True,
        help="held-out policy: a checkpoint's transformer/ folder",
    )
    command.add_argument(
        "--train-policy", action="append", default=[], help="policy to fine-tune on (same form)"
    )
    command.add_argument("--out", default=None, help="write the fine-tuned judge here (needs --train-policy)")
    command.add_argument("--steps", type=int, default=1500, help="fine-tuning steps (default 1500)")
    command.add_argument(
        "--policy-share", type=float, default=0.4, help="share of each batch of policy edits"
    )
    command.add_argument(
        "--num-test", type=int, default=256, help="held-out items per test policy and sampler"
    )
    command.add_argument(
        "--num-original", type=int, default=1024,
        help="synthetic and base-editor items of the build's data in the fine-tuning mix (default 1024)",
    )  # fmt: skip
    command.add_argument("--json", default=None, help="also write the result to this JSON file")


def _add_rollout_groups(commands) -> None:
    command = commands.add_parser(
        "rollout-groups",
        help="within-group order of a policy's rollouts: success vs preservation, judge vs truth",
    )
    command.add_argument(
        "--policy", default=None, help="a checkpoint's transformer/ folder (default: the base editor)"
    )
    command.add_argument(
        "--judge", default=None, help="judge folder (default: the committed judge_qwen2_5_vl)"
    )
    command.add_argument("--editor", default=None, help="base editor folder (default: the committed one)")
    command.add_argument("--items", type=int, default=48, help="RL train items, one group each (default 48)")
    command.add_argument("--group-size", type=int, default=8, help="edits per item (default 8, the :toy k)")
    command.add_argument("--json", default=None, help="also write the result to this JSON file")


def _add_recolour_binding(commands) -> None:
    command = commands.add_parser(
        "recolour-binding", help="which shape a policy colours on held-out shape recolours"
    )
    command.add_argument(
        "--policy", default=None, help="a checkpoint's transformer/ folder (default: the base editor)"
    )
    command.add_argument("--editor", default=None, help="base editor folder (default: the committed one)")
    command.add_argument("--items", type=int, default=128, help="held-out recolours (default 128)")
    command.add_argument("--samples", type=int, default=2, help="noise draws per item (default 2)")
    command.add_argument("--json", default=None, help="also write the result to this JSON file")


def _binding(args: argparse.Namespace) -> None:
    """Run :func:`edit_r1.toyworld.binding.recolour_binding` and print it as JSON."""
    from pathlib import Path

    from edit_r1.toyworld import CHECKPOINTS
    from edit_r1.toyworld.binding import recolour_binding
    from edit_r1.toyworld.build import QWEN_DIR

    if not 1 <= args.items <= 4096 or not 1 <= args.samples <= 16:
        raise SystemExit(
            f"recolour-binding: --items {args.items} (want 1..4096) or --samples {args.samples} (want 1..16)"
        )
    if args.policy and not (Path(args.policy) / "config.json").is_file():
        raise SystemExit(
            f"recolour-binding: --policy {args.policy} is not a transformer folder (no config.json)"
        )
    result = recolour_binding(
        Path(args.editor) if args.editor else CHECKPOINTS / QWEN_DIR,
        Path(args.policy) if args.policy else None,
        num_items=args.items,
        samples=args.samples,
    )
    _print_json(result, args.json)


def _rollout_groups(args: argparse.Namespace) -> None:
    """Run :func:`edit_r1.toyworld.rollout_groups.rollout_group_stats` and print it as JSON."""
    from pathlib import Path

    from edit_r1.toyworld import CHECKPOINTS
    from edit_r1.toyworld.build import QWEN_DIR
    from edit_r1.toyworld.learning import JUDGE_DIR
    from edit_r1.toyworld.rollout_groups import rollout_group_stats

    if args.group_size < 2 or not 1 <= args.items <= 256:
        raise SystemExit(
            f"rollout-groups: --group-size {args.group_size} (want >= 2) or --items {args.items} "
            "(want 1..256, the RL train items)"
        )
    if args.policy and not (Path(args.policy) / "config.json").is_file():
        raise SystemExit(
            f"rollout-groups: --policy {args.policy} is not a transformer folder (no config.json)"
        )
    result = rollout_group_stats(
        Path(args.editor) if args.editor else CHECKPOINTS / QWEN_DIR,
        Path(args.judge) if args.judge else JUDGE_DIR,
        Path(args.policy) if args.policy else None,
        num_items=args.items,
        group_size=args.group_size,
    )
    _print_json(result, args.json)


def _policy_judge(args: argparse.Namespace) -> None:
    """Run :func:`edit_r1.toyworld.policy_judge.run_policy_judge` and print its result as JSON."""
    from pathlib import Path

    from edit_r1.toyworld import CHECKPOINTS
    from edit_r1.toyworld.build import QWEN_DIR
    from edit_r1.toyworld.learning import JUDGE_DIR
    from edit_r1.toyworld.policy_judge import fine_tuning_settings, run_policy_judge

    if args.out and not args.train_policy:
        raise SystemExit("policy-judge: --out needs at least one --train-policy")
    for path in [*args.test_policy, *args.train_policy]:
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"policy-judge: {path} is not a transformer folder (no config.json)")
    result = run_policy_judge(
        Path(args.judge) if args.judge else JUDGE_DIR,
        Path(args.editor) if args.editor else CHECKPOINTS / QWEN_DIR,
        [Path(p) for p in args.train_policy],
        [Path(p) for p in args.test_policy],
        Path(args.out) if args.out else None,
        fine_tuning_settings(args.steps, args.policy_share, args.num_original),
        args.num_test,
    )
    _print_json(result, args.json)


if __name__ == "__main__":
    main()
