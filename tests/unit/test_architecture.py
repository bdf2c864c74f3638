"""The import rules of docs/architecture.md, checked on the source (AST only: nothing is imported
but the model registry, for the family names).

The reward server's seal (it imports nothing from ``edit_r1`` and never edits ``sys.path``) is
checked by ``tests/server/test_server_is_self_contained.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The pure maths: tensors in, tensors out.
MATHS = ("edit_r1/algo", "edit_r1/sampling")
MATHS_MAY_IMPORT = ("edit_r1.algo", "edit_r1.sampling")
MATHS_FORBIDDEN_THIRD_PARTY = ("torch.distributed", "diffusers", "transformers", "peft", "wandb")
# Where a family may not be named: everything that drives a policy without being one. Entry
# files named after a family (scripts/train_nft_<family>.py, reproduction/sampling/*) are the
# original's per-family commands and stay outside this rule, as do config/, tests and docs.
FAMILY_NEUTRAL = ("edit_r1", "benchmarks", "scripts/benchmark.py", "scripts/evaluation.py")
FAMILY_HOME = "edit_r1/models"
# Builders of checkpoints in a family's format (like edit_r1/models/tiny.py): the toy world's
# editor is a Qwen-Image-Edit pipeline by construction.
FAMILY_CHECKPOINT_BUILDERS = ("edit_r1/toyworld",)
# The config key table is the users' key reference, as config/ is: it writes the shipped defaults
# (model_family="qwen_image_edit", algorithm="nft", the 2509 checkpoint) and help text that says
# which family or algorithm reads a key. It holds data only: no code there branches on a name.
USER_KEY_TABLE = "edit_r1/config_keys.py"
# Architecture words of the families' transformers, whatever their registry names.
ARCHITECTURE_WORDS = ("flux", "qwenimage")


def python_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        path = REPO / root
        yield from [path] if path.is_file() else sorted(path.rglob("*.py"))


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from edit_r1 import distributed` imports edit_r1.distributed: name what was imported.
            yield from ((node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_maths_imports_no_models_distributed_code_or_trainer():
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in python_files(*MATHS)
        for line, module in imported_modules(path)
        if (module.startswith("edit_r1") and not within(module, MATHS_MAY_IMPORT))
        or within(module, MATHS_FORBIDDEN_THIRD_PARTY)
    ]
    assert not bad, "the maths (edit_r1/algo, edit_r1/sampling) must stay pure tensor code:\n" + "\n".join(
        bad
    )


COMPONENTS_MAY_IMPORT = (
    "edit_r1.training", "edit_r1.algo", "edit_r1.sampling", "edit_r1.data", "edit_r1.rewards",
    "edit_r1.models.base", "edit_r1.parallelize", "edit_r1.distributed", "edit_r1.settings",
    "edit_r1.tracking", "edit_r1.inference", "edit_r1.monitors",
)  # fmt: skip
# The lower rooms and what of this repository each may import (docs/architecture.md, "Rooms").
ROOM_MAY_IMPORT = {
    "edit_r1/models": ("edit_r1.models", "reward_server.qwen_vl_processor"),
    "edit_r1/data": ("edit_r1.data", "reward_server.protocol"),
    "edit_r1/rewards": ("edit_r1.rewards", "edit_r1.data.toy", "reward_server.protocol"),
    "edit_r1/distributed.py": ("edit_r1.distributed",),
    "edit_r1/checkpoint.py": ("edit_r1.checkpoint", "edit_r1.distributed"),
    "edit_r1/tracking.py": ("edit_r1.tracking",),
    "edit_r1/monitors.py": ("edit_r1.monitors", "edit_r1.rewards", "edit_r1.tracking"),
    # The loop: only its components, the boundary (typed settings) and the glue.
    "edit_r1/trainer.py": (
        "edit_r1.training",
        "edit_r1.config",
        "edit_r1.settings",
        "edit_r1.distributed",
        "edit_r1.tracking",
    ),  # fmt: skip
    # The components get what they use handed in: no model registry, no config, no other component's
    # builder; only the checkpointer writes checkpoints. edit_r1/training/build.py wires them.
    **{
        f"edit_r1/training/{name}.py": COMPONENTS_MAY_IMPORT + extra
        for name, extra in {
            "editing": (),
            "rollout_collector": (),
            "epoch_scorer": (),
            "updater": (),
            "evaluator": (),
            "checkpointer": ("edit_r1.checkpoint",),
            "errors": (),
            "forward_counter": (),
        }.items()
    },  # fmt: skip
}


@pytest.mark.parametrize("room", sorted(ROOM_MAY_IMPORT))
def test_lower_rooms_import_only_what_they_may(room):
    allowed = ROOM_MAY_IMPORT[room]
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in python_files(room)
        for line, module in imported_modules(path)
        if within(module, ("edit_r1", "reward_server", "benchmarks")) and not within(module, allowed)
    ]
    assert not bad, f"{room} may import only {allowed} of this repository:\n" + "\n".join(bad)


def test_nothing_installed_imports_the_benchmarks_or_the_tests():
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in python_files("edit_r1", "reward_server")
        for line, module in imported_modules(path)
        if within(module, ("benchmarks", "tests"))
    ]
    assert not bad, "\n".join(bad)


def family_words() -> tuple[set[str], set[str]]:
    """(single words, multi-word names) that name a registered family or its classes."""
    from edit_r1.models.base import Condition
    from edit_r1.models.registry import POLICY_FAMILIES

    words, names = set(ARCHITECTURE_WORDS), set()
    classes = [*POLICY_FAMILIES.values(), *Condition.__subclasses__()]
    for cls in POLICY_FAMILIES.values():
        for name in (cls.family, *cls.aliases):
            (names if "_" in name else words).add(name.lower())
    for cls in classes:
        names.add(cls.__name__.lower())
    return words, names


def code_strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of identifiers, imported names and string constants -- docstrings excluded
    (prose may say which families a piece of code was checked against)."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr
        elif isinstance(node, ast.alias):
            yield node.lineno, node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def names_a_family(text: str, words: set[str], names: set[str]) -> bool:
    lowered = text.lower()
    tokens = {t.lower() for t in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", text)}
    return bool(tokens & words) or any(name in lowered for name in names)


def test_model_families_are_named_only_under_edit_r1_models():
    words, names = family_words()
    bad = [
        f"{path.relative_to(REPO)}:{line}: {text[:60]!r}"
        for path in python_files(*FAMILY_NEUTRAL)
        if not any(
            path.is_relative_to(REPO / home)
            for home in (FAMILY_HOME, *FAMILY_CHECKPOINT_BUILDERS, USER_KEY_TABLE)
        )
        for line, text in code_strings(ast.parse(path.read_text(), str(path)))
        if names_a_family(text, words, names)
    ]
    assert not bad, (
        "a family's knowledge lives in edit_r1/models/<family>.py and is reached through the registry "
        "(docs/architecture.md):\n" + "\n".join(bad)
    )


def test_the_family_rule_sees_a_family_name():
    """The checker itself: it flags a family in code but not in a docstring or a judge's folder name."""
    words, names = family_words()
    source = '"""Checked with FLUX and kontext."""\nx = policy_class("kontext")\ny = "judge_qwen2_5_vl"\n'
    hits = [text for _, text in code_strings(ast.parse(source)) if names_a_family(text, words, names)]
    assert hits == ["kontext"]


# Where an algorithm may not be named (docs/architecture.md, "Adding an algorithm"): the installed
# package outside edit_r1/algo/, which reaches an algorithm through its registry and its
# Algorithm members. The original's command names (scripts/train_nft_<family>.py,
# config/<family>_nft.py) are not an algorithm's; the toy world's learning benchmark holds a table
# of each algorithm's command-line overrides, a command list like scripts/.
ALGORITHM_NEUTRAL = ("edit_r1",)
ALGORITHM_HOME = "edit_r1/algo"
ALGORITHM_COMMAND_TABLES = ("edit_r1/toyworld/learning.py", USER_KEY_TABLE)
ORIGINAL_COMMAND_NAMES = re.compile(r"train_nft_|_nft\.py")


def algorithm_words() -> set[str]:
    """The registry names and class names of every algorithm and its settings, lower-cased."""
    from edit_r1.algo import ALGORITHMS

    words = set()
    for cls in ALGORITHMS.values():
        words |= {cls.name.lower(), cls.__name__.lower(), cls.settings_class.__name__.lower()}
    return words


def names_an_algorithm(text: str, words: set[str]) -> bool:
    text = ORIGINAL_COMMAND_NAMES.sub(" ", text)
    tokens = {t.lower() for t in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", text)}
    return bool(tokens & words) or text.lower() in words


def test_algorithms_are_named_only_under_edit_r1_algo():
    words = algorithm_words()
    bad = [
        f"{path.relative_to(REPO)}:{line}: {text[:60]!r}"
        for path in python_files(*ALGORITHM_NEUTRAL)
        if not path.is_relative_to(REPO / ALGORITHM_HOME)
        and str(path.relative_to(REPO)) not in ALGORITHM_COMMAND_TABLES
        for line, text in code_strings(ast.parse(path.read_text(), str(path)))
        if names_an_algorithm(text, words)
    ]
    assert not bad, (
        "an algorithm's knowledge lives in edit_r1/algo/<algorithm>.py and is reached through "
        "edit_r1.algo.registry and its Algorithm members (docs/architecture.md):\n" + "\n".join(bad)
    )


def test_the_algorithm_rule_sees_an_algorithm_name():
    """The checker itself: a branch on a name or a class is flagged, the original's script names and
    docstrings are not."""
    words = algorithm_words()
    source = (
        '"""NFT and GRPO share the loop."""\nif settings.name == "grpo":\n    x = NFTSettings()\n'
        'y = "scripts/train_nft_kontext.py"\nz = "config/kontext_nft.py:tiny"\n'
    )
    hits = [text for _, text in code_strings(ast.parse(source)) if names_an_algorithm(text, words)]
    assert sorted(hits) == ["NFTSettings", "grpo"]


# One place for parallelism (docs/architecture.md, "Why these shapes"): FSDP is applied only by
# edit_r1/parallelize.py.
PARALLEL_HOME = "edit_r1/parallelize.py"


def test_only_parallelize_shards():
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in python_files("edit_r1")
        if path != REPO / PARALLEL_HOME
        for line, module in imported_modules(path)
        if within(module, ("torch.distributed.fsdp",)) or module.endswith(".fully_shard")
    ]
    assert not bad, f"FSDP is applied in {PARALLEL_HOME} only:\n" + "\n".join(bad)


# The environment is read at the settings boundary (edit_r1/settings.py: REWARD_SERVER,
# EVAL_REWARD_SERVER, REWARD_SERVER_API_KEY, WANDB_*) or by the launch glue (distributed.py:
# torchrun's RANK / WORLD_SIZE), never by the code that runs a training step.
ENVIRONMENT_FREE = (
    "edit_r1/trainer.py", "edit_r1/training", "edit_r1/algo", "edit_r1/sampling", "edit_r1/data",
    "edit_r1/parallelize.py", "edit_r1/checkpoint.py",
)  # fmt: skip


def environment_reads(tree: ast.AST) -> Iterator[int]:
    """Lines of ``os.environ`` / ``os.getenv`` uses and ``from os import environ, getenv``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            yield node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            yield from (node.lineno for alias in node.names if alias.name in ("environ", "getenv"))


def test_the_training_code_reads_no_environment():
    bad = [
        f"{path.relative_to(REPO)}:{line}"
        for path in python_files(*ENVIRONMENT_FREE)
        for line in environment_reads(ast.parse(path.read_text(), str(path)))
    ]
    assert not bad, "read environment variables in edit_r1/settings.py (the boundary):\n" + "\n".join(bad)


def test_the_environment_rule_sees_a_read():
    source = "import os\nx = os.environ.get('EVAL_REWARD_SERVER')\nfrom os import getenv\n"
    assert sorted(environment_reads(ast.parse(source))) == [2, 3]


# Short functions (docs/architecture.md, "Rooms"): a longer one names its pieces instead. A
# function that is mostly a table may stay longer: list it here as "path:name" with its reason.
MAX_FUNCTION_LINES = 60
CODE_ROOTS = ("edit_r1", "reward_server", "benchmarks", "scripts", "reproduction", "config")
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}


def long_functions(tree: ast.AST, limit: int) -> Iterator[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, decorators excluded."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                yield node.name, lines


def test_no_function_is_longer_than_sixty_lines():
    bad = [
        f"{path.relative_to(REPO)}:{name} has {lines} lines"
        for path in python_files(*CODE_ROOTS)
        for name, lines in long_functions(ast.parse(path.read_text(), str(path)), MAX_FUNCTION_LINES)
        if f"{path.relative_to(REPO)}:{name}" not in LONG_FUNCTIONS_ALLOWED
    ]
    assert not bad, f"split these into named pieces (at most {MAX_FUNCTION_LINES} lines):\n" + "\n".join(bad)


def test_the_length_rule_counts_a_long_function():
    source = "def short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert list(long_functions(ast.parse(source), MAX_FUNCTION_LINES)) == [("long", MAX_FUNCTION_LINES + 1)]


# The typed-settings boundary (docs/architecture.md, "Typed settings"): the trainer reads
# edit_r1.settings dataclasses; of the user's config it only logs and checkpoints the whole
# (to_dict) and records a generated run name.
TYPED_READERS = (
    "edit_r1/trainer.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "edit_r1/training").glob("*.py")),
)
CONFIG_USES_ALLOWED = {"to_dict", "run_name"}


def config_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, key) of every ``config.KEY`` / ``self.config.KEY`` / ``config[...]`` in ``tree``."""
    for node in ast.walk(tree):
        target = node.value if isinstance(node, ast.Attribute | ast.Subscript) else None
        named_config = (isinstance(target, ast.Name) and target.id == "config") or (
            isinstance(target, ast.Attribute) and target.attr == "config"
        )
        if named_config:
            yield node.lineno, node.attr if isinstance(node, ast.Attribute) else "[...]"


@pytest.mark.parametrize("path", TYPED_READERS)
def test_the_trainer_reads_typed_settings_not_config_sections(path):
    bad = [
        f"{path}:{line} reads config.{key}"
        for line, key in config_reads(ast.parse((REPO / path).read_text(), path))
        if key not in CONFIG_USES_ALLOWED
    ]
    assert not bad, "read the typed settings (edit_r1/settings.py) instead:\n" + "\n".join(bad)


def test_the_config_rule_sees_a_section_read():
    source = "config.to_dict()\nx = self.config.sample.solver\ny = config['train']\n"
    assert sorted(key for _, key in config_reads(ast.parse(source))) == ["[...]", "sample", "to_dict"]
