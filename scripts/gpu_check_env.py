"""Before the GPU check: every package it imports is there, or is installed from carried wheels.

    python3 scripts/gpu_check_env.py --wheels .gpu-wheels --site /tmp/site

Standard library only (it runs before anything is known about the interpreter). For each module
of :data:`REQUIRED` that the interpreter cannot find, the wheel of its distribution in ``--wheels``
(``make gpu-wheels`` fills it) is installed into ``--site`` with this interpreter's pip
(``--no-index --no-deps``: nothing is fetched); ``scripts/gpu_check.sh`` then puts ``--site`` on
``PYTHONPATH``. Only missing distributions are installed, so nothing the machine has is shadowed.

Exit status 0 when every module is found (or installed now); 2 with one line on stderr naming each
missing package (and the fix) otherwise — never a traceback.

    python3 scripts/gpu_check_env.py --audit scripts/gpu_machine_packages.txt

checks instead that every distribution installed for this interpreter is named in the lent
machine's package list (``make gpu-rehearsal`` builds its venv and then runs this, so that the
rehearsal cannot pass on a package the lent machine does not have); status 1 naming the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

# (module imported by scripts/gpu_check.py or the code it runs, distribution that provides it).
REQUIRED = (
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("PIL", "pillow"),
    ("safetensors", "safetensors"),
    ("tokenizers", "tokenizers"),
    ("huggingface_hub", "huggingface-hub"),
    ("transformers", "transformers"),
    ("accelerate", "accelerate"),
    ("peft", "peft"),
    ("diffusers", "diffusers"),
    ("ml_collections", "ml-collections"),
    ("absl", "absl-py"),
    ("yaml", "pyyaml"),
    ("regex", "regex"),
    ("requests", "requests"),
    ("tqdm", "tqdm"),
    ("sentencepiece", "sentencepiece"),  # the tiny kit's T5 tokenizer (edit_r1.models.tiny)
    ("google.protobuf", "protobuf"),  # sentencepiece's model proto, read by the same build
)
PREFIX = "gpu_check"


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name (``ml_collections`` -> ``ml-collections``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distribution(path: Path) -> str:
    """The normalised distribution name of a wheel file (``name-version-...whl``)."""
    return normalise(path.name.split("-", 1)[0])


def missing_modules(extra_path: Path | None = None) -> list[tuple[str, str]]:
    """The (module, distribution) pairs of REQUIRED this interpreter cannot find (with ``extra_path``
    searched first, as ``PYTHONPATH`` will put it)."""
    if extra_path is not None:
        sys.path.insert(0, str(extra_path))
        importlib.invalidate_caches()
    return [(module, dist) for module, dist in REQUIRED if not _found(module)]


def _found(module: str) -> bool:
    """Whether ``module`` can be imported-to-be (a dotted name whose parent is absent: not found)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def wheels_for(missing: list[tuple[str, str]], wheels: Path) -> tuple[list[Path], list[str]]:
    """(wheel files that provide missing distributions, distributions without a wheel)."""
    available = (
        {wheel_distribution(path): path for path in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}
    )
    found, absent = [], []
    for _module, dist in missing:
        if normalise(dist) in available:
            found.append(available[normalise(dist)])
        else:
            absent.append(dist)
    return found, absent


def install(wheel_files: list[Path], site: Path) -> str | None:
    """Install the wheels into ``site`` with this interpreter's pip; None, or pip's last line on failure."""
    if importlib.util.find_spec("pip") is None:
        return "this interpreter has no pip to install the carried wheels with"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), *map(str, wheel_files)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"pip exited with {done.returncode}"
    return None


def fail(message: str) -> int:
    print(f"{PREFIX}: {message}", file=sys.stderr)
    return 2


def listed_names(package_list: Path) -> set[str]:
    """The normalised names of a package list (one ``name[==version]`` a line, ``#`` comments)."""
    lines = (line.split("#", 1)[0].strip() for line in package_list.read_text().splitlines())
    return {normalise(re.split(r"[=<>!~ ]", line, maxsplit=1)[0]) for line in lines if line}


def audit(package_list: Path) -> int:
    """0 when every installed distribution is in ``package_list``; else 1, naming the others."""
    from importlib.metadata import distributions

    installed = {normalise(dist.metadata["Name"]) for dist in distributions()}
    extra = sorted(installed - listed_names(package_list))
    if extra:
        print(f"{PREFIX}: installed but not on the lent GPU machine ({package_list}): {', '.join(extra)}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"{PREFIX}: all {len(installed)} installed distributions are on the lent GPU machine's list")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, default=Path(".gpu-wheels"), help="folder of carried wheels")
    parser.add_argument("--site", type=Path, help="where missing wheels are installed")
    parser.add_argument("--audit", type=Path, metavar="PACKAGE_LIST", help="check the installed set instead")
    args = parser.parse_args(argv)
    if args.audit is not None:
        return audit(args.audit)
    if args.site is None:
        parser.error("--site is required (unless --audit)")
    missing = missing_modules()
    if not missing:
        return 0
    wheel_files, absent = wheels_for(missing, args.wheels)
    if absent:
        return fail(
            f"missing Python package(s) {', '.join(absent)} for {sys.executable}, and {args.wheels}/ has no "
            "wheel of them (`make gpu-wheels` fetches the ones the lent GPU machine lacks, scripts/gpu_wheels.txt, "
            "to be named in the device call's carry; for the others use an interpreter that has them, e.g. "
            "PYTHON=.venv/bin/python; docs/performance.md)"
        )
    problem = install(wheel_files, args.site)
    still = missing_modules(args.site) if problem is None else missing
    if problem is not None or still:
        names = ", ".join(dist for _module, dist in still)
        return fail(
            f"missing Python package(s) {names}: installing {args.wheels}/ failed ({problem or 'installed, still not importable'})"
        )
    print(f"{PREFIX}: installed {', '.join(path.name for path in wheel_files)} into {args.site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
