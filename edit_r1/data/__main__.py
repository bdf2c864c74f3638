"""Dataset tools (``docs/data.md``)::

    python -m edit_r1.data check DIR [--min_side 512]
    python -m edit_r1.data convert --from imgedit --input_path edits.json --root_path IMAGES --out DIR
    python -m edit_r1.data convert --from folder --images IMAGES --instructions edits.csv --out DIR
    python -m edit_r1.data convert --from jsonl --input_path edits.jsonl --out DIR \\
        [--prompt_field instruction --image_field source --requirement_field requirement]

``convert`` takes ``--test_fraction 0.05 | --num_test N``, ``--seed 0``, ``--mode copy|symlink|hardlink``,
``--skip_invalid`` and ``--overwrite``. Both exit with status 1 on errors, naming file and line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from edit_r1.data.check import check_dataset, exit_status, print_result
from edit_r1.data.convert import MODES, SOURCES, ConvertError, SourceItem, convert, read_imgedit, read_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edit_r1.data", description="Dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate DIR/{train,test}_metadata.jsonl and their images")
    check.add_argument("dir", help="dataset folder")
    _add_check_flags(check)
    conv = commands.add_parser("convert", help="build the layout from imgedit / folder / jsonl sources")
    conv.add_argument("--from", dest="source", choices=SOURCES, required=True)
    conv.add_argument("--out", required=True, help="output dataset folder (empty or new)")
    conv.add_argument("--input_path", help="imgedit: the JSON; jsonl: the JSON-lines file")
    conv.add_argument(
        "--root_path", help="folder the image paths are relative to (jsonl: default its folder)"
    )
    conv.add_argument("--images", help="folder: the image folder")
    conv.add_argument("--instructions", help="folder: CSV or JSONL with image, prompt[, requirement]")
    conv.add_argument("--prompt_field", default="prompt", help="jsonl: instruction field (default prompt)")
    conv.add_argument(
        "--image_field", default="image", help="jsonl: image path (or list) field (default image)"
    )
    conv.add_argument("--requirement_field", default="requirement", help="jsonl: requirement field")
    conv.add_argument("--test_fraction", type=float, default=0.05, help="share of source images in test")
    conv.add_argument("--num_test", type=int, default=None, help="number of source images in test")
    conv.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    conv.add_argument("--mode", choices=MODES, default="copy", help="how images reach OUT/images")
    conv.add_argument("--skip_invalid", action="store_true", help="drop invalid items instead of failing")
    conv.add_argument("--overwrite", action="store_true", help="replace the dataset in a non-empty --out")
    _add_check_flags(conv)
    return parser


def _add_check_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min_side", type=int, default=512, help="warn below this image side (resolution)")
    parser.add_argument("--max_warnings", type=int, default=50, help="warnings printed (all are counted)")


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{name}" for name in names if not getattr(args, name)]
    if missing:
        raise ConvertError(f"--from {args.source} needs {' and '.join(missing)}")


def read_source(args: argparse.Namespace) -> list[SourceItem]:
    if args.source == "imgedit":
        _need(args, "input_path", "root_path")
        return read_imgedit(Path(args.input_path), Path(args.root_path))
    if args.source == "folder":
        _need(args, "images", "instructions")
        return read_table(
            Path(args.instructions), Path(args.images), ("prompt", "instruction"), "image", "requirement"
        )
    _need(args, "input_path")
    path = Path(args.input_path)
    root = Path(args.root_path) if args.root_path else path.parent
    return read_table(path, root, (args.prompt_field,), args.image_field, args.requirement_field)


def run_convert(args: argparse.Namespace) -> int:
    try:
        num_train, num_test, dropped = convert(
            read_source(args), args.out, test_fraction=args.test_fraction, num_test=args.num_test,
            seed=args.seed, mode=args.mode, skip_invalid=args.skip_invalid, overwrite=args.overwrite,
        )  # fmt: skip
    except ConvertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in dropped:
        print(f"dropped: {problem}")
    print(f"wrote {num_train} train and {num_test} test items to {args.out}; checking it:\n")
    return run_check(args.out, args)


def run_check(directory: str, args: argparse.Namespace) -> int:
    result = check_dataset(directory, min_side=args.min_side)
    print_result(result, max_warnings=args.max_warnings)
    return exit_status(result)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return run_check(args.dir, args)
    return run_convert(args)


if __name__ == "__main__":
    sys.exit(main())
