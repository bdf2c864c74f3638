"""The machinery of the config key table (``edit_r1/config_keys.py``): a :class:`Key` per config
key and the small declarative checks it may carry.

One :class:`Key` holds everything about one key: its dotted name, its default, its one-line help,
its per-key checks and, where the reference says more, the longer text of ``docs/configs.md``. From
a sequence of keys this module builds the ``ConfigDict`` (:func:`build_config`), lists the per-key
problems of a config (:func:`key_problems`), reads a settings dataclass whose fields name their key
(:func:`read_fields`) and renders the Markdown key tables (:func:`render_section`).

A check is an object with ``problems(name, value) -> list[str]`` (one line each, naming the key and
the bad value) and ``describe() -> str`` (the docs' "checked" cell). A key's checks run in order and
stop at the first one that fails, so a later check may assume what an earlier one established (a
string, an integer). Valid names that are declared by the code that uses them are referenced as
``"module:attribute"`` (a collection or a function returning one), imported only when a config is
checked or the docs are rendered: the table then imports neither torch nor the model stack, and
:mod:`edit_r1.settings`, which reads the table, may itself declare some of them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import ml_collections

T = TypeVar("T")
CONFIG_KEY = "config_key"  # dataclass field metadata: the config key the field is read from
EMPTY_IS_NONE = "empty_is_none"  # dataclass field metadata: "" or 0 in the config means None


class Check(Protocol):
    """What a key's check provides (see the module docstring)."""

    def problems(self, name: str, value: Any) -> list[str]: ...

    def describe(self) -> str: ...


def resolve(reference: str) -> Any:
    """``"package.module:NAME"`` -> that attribute, called when it is a function."""
    module, _, attribute = reference.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    return value() if callable(value) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _code(value: Any) -> str:
    return f"`{value}`"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """The value is one of ``choices``: a tuple, or a ``"module:NAME"`` reference to the
    collection the code that uses the value declares."""

    choices: tuple[Any, ...] | str

    def valid(self) -> tuple[Any, ...]:
        return tuple(resolve(self.choices) if isinstance(self.choices, str) else self.choices)

    def problems(self, name: str, value: Any) -> list[str]:
        valid = self.valid()
        return [] if value in valid else [f"{name}={value!r} is not one of {list(valid)}"]

    def describe(self) -> str:
        return "one of " + ", ".join(_code(choice) for choice in self.valid())


@dataclasses.dataclass(frozen=True)
class Integer:
    """An integer ``>= minimum`` (0: "non-negative", 1: "positive"); ``note`` ends the message,
    e.g. ``" (0 = auto)"``."""

    minimum: int
    note: str = ""

    def problems(self, name: str, value: Any) -> list[str]:
        if _is_integer(value) and value >= self.minimum:
            return []
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            self.minimum, f"an integer >= {self.minimum}"
        )
        return [f"{name}={value!r} must be {kind}{self.note}"]

    def describe(self) -> str:
        return f"integer ≥ {self.minimum}"


@dataclasses.dataclass(frozen=True)
class Bound:
    """A number ``> bound`` (``inclusive=False``) or ``>= bound``; ``what`` names it in the
    message (``"a number of seconds"``)."""

    bound: float
    inclusive: bool = False
    what: str = ""

    @property
    def operator(self) -> str:
        return ">=" if self.inclusive else ">"

    def problems(self, name: str, value: Any) -> list[str]:
        ok = _is_number(value) and (value >= self.bound if self.inclusive else value > self.bound)
        what = f"{self.what} " if self.what else ""
        return [] if ok else [f"{name}={value!r} must be {what}{self.operator} {self.bound}"]

    def describe(self) -> str:
        return f"{'≥' if self.inclusive else '>'} {self.bound}"


@dataclasses.dataclass(frozen=True)
class InRange:
    """A number in ``[low, high]``, each end open when asked; ``note`` ends the message."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def interval(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def problems(self, name: str, value: Any) -> list[str]:
        ok = (
            _is_number(value)
            and (self.low < value if self.low_open else self.low <= value)
            and (value < self.high if self.high_open else value <= self.high)
        )
        return [] if ok else [f"{name}={value!r} must lie in {self.interval()}{self.note}"]

    def describe(self) -> str:
        return f"in {self.interval()}"


@dataclasses.dataclass(frozen=True)
class PositiveMultiple:
    """A positive integer multiple of ``multiple``."""

    multiple: int

    def problems(self, name: str, value: Any) -> list[str]:
        if _is_integer(value) and value > 0 and not value % self.multiple:
            return []
        return [f"{name}={value!r} must be a positive multiple of {self.multiple}"]

    def describe(self) -> str:
        return f"positive multiple of {self.multiple}"


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    """A value that is not empty (``""``, ``()``)."""

    def problems(self, name: str, value: Any) -> list[str]:
        return [] if value else [f"{name} is empty"]

    def describe(self) -> str:
        return "non-empty"


@dataclasses.dataclass(frozen=True)
class IsString:
    """A string; ``note`` ends the message (``" ('' = the default)"``)."""

    note: str = ""

    def problems(self, name: str, value: Any) -> list[str]:
        return [] if isinstance(value, str) else [f"{name}={value!r} must be a string{self.note}"]

    def describe(self) -> str:
        return "string"


@dataclasses.dataclass(frozen=True)
class CheckedBy:
    """The value is checked by ``function`` (a ``"module:NAME"`` reference), called with the key's
    last part as keyword (``check_speed_options(compile_mode=value)``); the ``ValueError`` it raises
    is the problem line. ``summary`` is what the docs say it accepts."""

    function: str
    summary: str

    def problems(self, name: str, value: Any) -> list[str]:
        module, _, attribute = self.function.partition(":")
        check = getattr(importlib.import_module(module), attribute)
        try:
            check(**{name.rsplit(".", 1)[-1]: value})
        except ValueError as error:
            return [str(error)]
        return []

    def describe(self) -> str:
        return self.summary


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """A reward name -> weight mapping: not empty, numeric weights, registered names
    (``edit_r1.rewards.registry``); ``pointwise`` also refuses the group rewards (which compare the
    edits of one group and so cannot score single edits)."""

    pointwise: bool = False

    def problems(self, name: str, value: Any) -> list[str]:
        from edit_r1.rewards.registry import GROUP_REWARD_FACTORIES, KNOWN_REWARDS

        weights, problems = dict(value), []
        if not weights:
            problems.append(f"{name} is empty: name at least one reward function and its weight")
        bad = {reward: w for reward, w in weights.items() if not isinstance(w, int | float)}
        if bad:
            problems.append(f"{name} weights must be numbers, got {bad}")
        unknown = sorted(set(weights) - KNOWN_REWARDS)
        if unknown:
            problems.append(
                f"{name} names unknown reward function(s) {unknown}; known: {sorted(KNOWN_REWARDS)}"
            )
        grouped = sorted(set(weights) & set(GROUP_REWARD_FACTORIES)) if self.pointwise else []
        if grouped:
            problems.append(
                f"{name} names group reward(s) {grouped}: evaluation scores single edits, "
                "use a pointwise reward there (e.g. mllm_score_continue)"
            )
        return problems

    def describe(self) -> str:
        return "registered reward names → numbers" + (", pointwise rewards only" if self.pointwise else "")


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: ``name`` (dotted, ``"train.learning_rate"``), ``default`` (its type is the
    key's type: a tuple stays a tuple, a dict becomes a ``ConfigDict`` value such as ``reward_fn``),
    ``help`` (one line: what it is and why the default), ``checks`` (per key; rules that involve
    several keys are written in ``edit_r1.config``), ``doc`` (the reference's longer Markdown text,
    where it says more than ``help``) and ``doc_default`` (the reference's default cell where it
    says more than the value, e.g. ``"1.0 (Kontext 2.5)"``)."""

    name: str
    default: Any
    help: str
    checks: tuple[Check, ...] = ()
    doc: str = ""
    doc_default: str = ""

    def cast(self, value: Any) -> Any:
        """``value`` as the typed settings hold it: ``bool`` / ``int`` / ``float`` / ``str`` /
        ``tuple`` of the default's type, a mapping as it is."""
        kind = type(self.default)
        return kind(value) if kind in (bool, int, float, str, tuple) else value

    def problems(self, value: Any) -> list[str]:
        """The problems of the first check ``value`` fails (none when it passes them all)."""
        for check in self.checks:
            problems = check.problems(self.name, value)
            if problems:
                return problems
        return []


def lookup(config: Any, name: str) -> Any:
    """The value of dotted key ``name`` in ``config``."""
    node = config
    for part in name.split("."):
        node = node[part]
    return node


def build_config(keys: Iterable[Key]) -> ml_collections.ConfigDict:
    """A ``ConfigDict`` of every key at its default; a dotted name's sections are ``ConfigDict``s
    and a dict default becomes a ``ConfigDict`` value (a fresh copy per call)."""
    config = ml_collections.ConfigDict()
    for key in keys:
        *sections, leaf = key.name.split(".")
        node = config
        for section in sections:
            if section not in node:
                node[section] = ml_collections.ConfigDict()
            node = node[section]
        value = key.default
        node[leaf] = ml_collections.ConfigDict(dict(value)) if isinstance(value, Mapping) else value
    return config


def key_problems(keys: Iterable[Key], config: Any) -> list[str]:
    """Every per-key problem of ``config``, in table order (one line each)."""
    problems = []
    for key in keys:
        try:
            value = lookup(config, key.name)
        except (KeyError, AttributeError):
            problems.append(f"{key.name} is missing from the config")
            continue
        problems.extend(key.problems(value))
    return problems


def config_field(key: str, *, empty_is_none: bool = False) -> Any:
    """A settings dataclass field read from config key ``key`` by :func:`read_fields`;
    ``empty_is_none``: the config's ``""`` / ``0`` ("the default") becomes ``None``."""
    return dataclasses.field(metadata={CONFIG_KEY: key, EMPTY_IS_NONE: empty_is_none})


def read_fields(
    cls: type[T],
    config: Any,
    keys: Mapping[str, Key],
    *,
    names: Mapping[str, str] | None = None,
    **given: Any,
) -> T:
    """``cls(**fields)``: each field that names a config key (:func:`config_field`, or ``names``:
    field -> key, for a dataclass outside the boundary) is that key's value, cast to the key's type
    (:meth:`Key.cast`); the other fields are ``given`` (derived values). A field with neither is a
    ``TypeError`` naming it."""
    values = dict(given)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in values:
            continue
        name = (names or {}).get(field.name) or field.metadata.get(CONFIG_KEY)
        if name is None:
            raise TypeError(f"{cls.__name__}.{field.name} names no config key and was not given")
        value = keys[name].cast(lookup(config, name))
        values[field.name] = None if field.metadata.get(EMPTY_IS_NONE) and not value else value
    return cls(**values)


# ------------------------------------------------------------------------------------ the docs
def render_default(key: Key) -> str:
    """The docs' default cell: ``doc_default``, else the default as Python writes it (strings and
    mappings in backticks)."""
    if key.doc_default:
        return key.doc_default
    value = key.default
    if isinstance(value, str):
        return _code(f'"{value}"')
    if isinstance(value, Mapping):
        return _code("{" + ", ".join(f'"{name}": {weight!r}' for name, weight in value.items()) + "}")
    return repr(value)


def render_section(keys: Sequence[Key], prefix: str) -> str:
    """The Markdown table of the keys under ``prefix`` (``"sample."``; ``""`` = those of no table
    section), each row ``key | default | checked | meaning``."""
    rows = ["| key | default | checked | meaning |", "|---|---|---|---|"]
    for key in keys:
        leaf = key.name[len(prefix) :]
        checked = "; ".join(check.describe() for check in key.checks)
        meaning = (key.doc or key.help).replace("|", "\\|")
        rows.append(f"| `{leaf}` | {render_default(key)} | {checked} | {meaning} |")
    return "\n".join(rows)


def replace_region(text: str, region: str, body: str) -> str:
    """``text`` with the lines between ``<!-- region begin ... -->`` and ``<!-- region end -->``
    replaced by ``body``; a ``ValueError`` when the markers are missing."""
    begin, end = f"<!-- {region} begin", f"<!-- {region} end -->"
    if begin not in text or end not in text:
        raise ValueError(f"docs: markers {begin!r} ... {end!r} not found")
    head, rest = text.split(begin, 1)
    marker, _, tail = rest.partition("\n")
    _, after = tail.split(end, 1)
    return f"{head}{begin}{marker}\n{body}\n{end}{after}"


def section_of(name: str, sections: Sequence[str]) -> str:
    """The docs section of a key: its first part when that is a table section, else ``""``."""
    first = name.split(".", 1)[0]
    return first if "." in name and first in sections else ""


def group(keys: Iterable[Key], sections: Sequence[str]) -> dict[str, list[Key]]:
    """Keys by docs section, in table order."""
    grouped: dict[str, list[Key]] = {section: [] for section in sections}
    for key in keys:
        grouped[section_of(key.name, sections)].append(key)
    return grouped


def by_name(keys: Sequence[Key]) -> dict[str, Key]:
    """Name -> key; a ``ValueError`` naming a key written twice (the table is one entry per key)."""
    table: dict[str, Key] = {}
    for key in keys:
        if key.name in table:
            raise ValueError(f"config key {key.name!r} is written twice in the key table")
        table[key.name] = key
    return table
