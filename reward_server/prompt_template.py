"""The judge's prompt (docs/reward-server.md), versioned by name so a score can be traced to its prompt.

The judge sees one user turn: [source image(s), edited image, text]. The text states the instruction
and the item's requirement, asks for a 0-5 rating and for the number only.

Placeholders of a template: ``{instruction}`` (or the original's name for it, ``{prompt}``), ``{requirement}`` (an empty one is stated as
"none beyond the instruction") and ``{image_roles}``, the sentence saying which image is which. With
one source image it reads "The first image is the original image and the second image is the
edited result." (so the text of ``edit_r1_v1`` is unchanged from its first version); with n > 1
(several reference images) "The first n images are the original images (Picture 1 to Picture n)
and the last image is the edited result." Changing the wording
changes the reward, so a new wording gets a new name instead of silently replacing an old one;
the server reports the name and the SHA-256 of its text in ``/health`` and in every ``/score``
response.

A user's template (``reward_server.py --template-file PATH``) uses the original's placeholders
``{prompt}`` (the instruction) and ``{requirement}``, filled in with ``str.format`` exactly as the
original server did: nothing is stripped and an empty requirement stays blank. Its id is
``file:<absolute path>``; its name in ``/health`` is ``file:<file name>``.

The pairwise question (protocol version 2) is a template of its own: the built-in template's entry
of :data:`PAIRWISE_TEMPLATES`, or a file (``--pairwise-template-file PATH``, placeholders ``{prompt}``
and ``{requirement}``, filled in like a pointwise file), or none at all: a server whose pointwise
prompt is a file has no pairwise question unless it is given one, and it refuses pairwise items
(``reward_server/app.py``). ``/health`` and every ``/score`` response name it in
``pairwise_template`` / ``pairwise_template_sha256`` (both null when there is none).
"""

from __future__ import annotations

import functools
import hashlib
import string
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

DEFAULT_TEMPLATE = "edit_r1_v1"
NO_REQUIREMENT = "none beyond the instruction"

_EDIT_R1_V1 = (
    "You are evaluating an image edit. {image_roles}\n"
    "Editing instruction: {instruction}\n"
    "Requirements: {requirement}\n"
    "Rate the edit on a scale from 0 to 5, where 0 means the wrong object was edited or the edit "
    "fails the requirements, and 5 means the correct object was edited, the requirements are met "
    "and the visual quality is high.\n"
    "Answer with the number only."
)

# The toy world's judge (docs/toyworld.md): the instruction only, so that a judge trained from
# scratch on a CPU reads ~30 tokens instead of ~150 and learns in minutes. {requirement} is unused.
_TOY_V1 = "Edit: {instruction}\nScore 0-5:"

TEMPLATES: Mapping[str, str] = MappingProxyType({"edit_r1_v1": _EDIT_R1_V1, "toy_v1": _TOY_V1})

# The pairwise question of each template (protocol version 2): [source, edit 1, edit 2, text]; the
# judge answers "1" or "2" and the score is the softmax over those two answer tokens.
_EDIT_R1_PAIR_V1 = (
    "You are comparing two edits of the same image. The first image is the original image; the "
    "second image is edit 1 and the third image is edit 2, both made from the original with the "
    "same instruction.\n"
    "Editing instruction: {instruction}\n"
    "Requirements: {requirement}\n"
    "Which edit is better: the one that changes the correct object, meets the requirements and "
    "has the higher visual quality?\n"
    "Answer 1 for edit 1 or 2 for edit 2, with the number only."
)

# The toy judge's pairwise question (docs/toyworld.md), short for the same reason as ``toy_v1``.
_TOY_PAIR_V1 = "Edit: {instruction}\nBetter, 1 or 2:"

PAIRWISE_TEMPLATES: Mapping[str, str] = MappingProxyType(
    {"edit_r1_v1": _EDIT_R1_PAIR_V1, "toy_v1": _TOY_PAIR_V1}
)
PAIRWISE_ANSWERS = ("1", "2")  # answer tokens of the pairwise question: edit 1 / edit 2 is better


def image_roles(num_sources: int = 1) -> str:
    """The ``{image_roles}`` sentence for ``num_sources`` source images followed by the edit."""
    if num_sources < 1:
        raise ValueError(f"need at least one source image, got {num_sources}")
    if num_sources == 1:
        return "The first image is the original image and the second image is the edited result."
    return (
        f"The first {num_sources} images are the original images (Picture 1 to Picture {num_sources}) "
        "and the last image is the edited result."
    )


FILE_PREFIX = "file:"
PLACEHOLDERS = ("prompt", "requirement", "image_roles")
# A pairwise question shows a fixed [source, edit 1, edit 2] layout, so it has no {image_roles}.
PAIRWISE_PLACEHOLDERS = ("prompt", "requirement")
POINTWISE_FILE, PAIRWISE_FILE = "template", "pairwise template"  # the two kinds of template file
_FILE_PLACEHOLDERS = {POINTWISE_FILE: PLACEHOLDERS, PAIRWISE_FILE: PAIRWISE_PLACEHOLDERS}
# BackendOptions.pairwise_template / render_item_prompt: "the built-in pairwise question of the
# pointwise template if it has one, else none".
AUTO = "auto"


class TemplateError(ValueError):
    """A template file cannot be used; the message names the file and the problem."""


class NoPairwiseTemplateError(ValueError):
    """A pairwise item reached a judge that has no pairwise question."""


@functools.lru_cache(maxsize=8)
def load_template_file(path: str, kind: str = POINTWISE_FILE) -> str:
    """The text of a template file of ``kind`` (``"template"`` or ``"pairwise template"``), checked:
    UTF-8, ``{prompt}`` present, no placeholder other than the kind's."""
    allowed = _FILE_PLACEHOLDERS[kind]
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateError(f"{kind} file {path}: cannot read it ({error})") from None
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as error:
        raise TemplateError(f"{kind} file {path}: {error} (write literal braces as {{{{ and }}}})") from None
    unknown = sorted(fields - set(allowed))
    if unknown or "prompt" not in fields:
        others = [f"{{{name}}}" for name in allowed[1:]]
        wanted = ", ".join(["{prompt} (required)", *others[:-1]]) + f" and {others[-1]}"
        raise TemplateError(f"{kind} file {path}: placeholders must be {wanted}; found {sorted(fields)}")
    return text


def template_id_for_file(path: str | Path, kind: str = POINTWISE_FILE) -> str:
    """The id under which a (checked) template file is used: ``file:<absolute path>``."""
    resolved = str(Path(path).resolve())
    load_template_file(resolved, kind)
    return FILE_PREFIX + resolved


def pairwise_template_id_for_file(path: str | Path) -> str:
    """The id of a (checked) pairwise template file: ``file:<absolute path>``."""
    return template_id_for_file(path, PAIRWISE_FILE)


def template_text(template: str) -> str:
    """The text of a built-in template name or a ``file:`` id."""
    if template.startswith(FILE_PREFIX):
        return load_template_file(template[len(FILE_PREFIX) :])
    if template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def resolve_pairwise_template(pairwise_template: str | None, template: str) -> str | None:
    """The pairwise question in use: ``pairwise_template`` itself, or for :data:`AUTO` the built-in
    pairwise question of ``template`` (a name of :data:`PAIRWISE_TEMPLATES`) or None (a file has none)."""
    if pairwise_template != AUTO:
        return pairwise_template
    return template if template in PAIRWISE_TEMPLATES else None


def pairwise_template_text(pairwise_template: str | None) -> str:
    """The text of a pairwise question: a name of :data:`PAIRWISE_TEMPLATES` or a ``file:`` id."""
    if pairwise_template is None:
        raise NoPairwiseTemplateError(
            "this judge has no pairwise question (a server whose prompt is a --template-file needs "
            "--pairwise-template-file PATH for pairwise items; the built-in --template names have one)"
        )
    if pairwise_template.startswith(FILE_PREFIX):
        return load_template_file(pairwise_template[len(FILE_PREFIX) :], PAIRWISE_FILE)
    if pairwise_template not in PAIRWISE_TEMPLATES:
        raise KeyError(
            f"prompt template {pairwise_template!r} has no pairwise question; known: {sorted(PAIRWISE_TEMPLATES)}"
        )
    return PAIRWISE_TEMPLATES[pairwise_template]


def _display_name(template: str) -> str:
    """``file:<file name>`` for a ``file:`` id (the directory stays private), else the name."""
    if template.startswith(FILE_PREFIX):
        return FILE_PREFIX + Path(template[len(FILE_PREFIX) :]).name
    return template


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def template_info(template: str) -> dict[str, str]:
    """``{"template": name, "template_sha256": hex}`` for ``/health`` and ``/score`` responses."""
    return {"template": _display_name(template), "template_sha256": _sha256(template_text(template))}


def pairwise_template_info(pairwise_template: str | None) -> dict[str, str | None]:
    """``{"pairwise_template": name, "pairwise_template_sha256": hex}`` (both None without one)."""
    if pairwise_template is None:
        return {"pairwise_template": None, "pairwise_template_sha256": None}
    return {
        "pairwise_template": _display_name(pairwise_template),
        "pairwise_template_sha256": _sha256(pairwise_template_text(pairwise_template)),
    }


def judge_prompt_info(template: str, pairwise_template: str | None) -> dict[str, str | None]:
    """Both questions' names and hashes, as ``/health`` and every ``/score`` response carry them."""
    return {**template_info(template), **pairwise_template_info(pairwise_template)}


def render_prompt(
    instruction: str, requirement: str = "", template: str = DEFAULT_TEMPLATE, num_sources: int = 1
) -> str:
    """The judge's text for one item. Built-in templates strip the texts and state an empty
    requirement as such; a template file is filled in as the original filled its prompt
    (``text.format(prompt=..., requirement=...)``: nothing stripped, an empty requirement blank;
    ``{image_roles}`` is available to it too)."""
    text = template_text(template)
    if template.startswith(FILE_PREFIX):
        return text.format(prompt=instruction, requirement=requirement, image_roles=image_roles(num_sources))
    return text.format(
        instruction=instruction.strip(),
        prompt=instruction.strip(),
        requirement=requirement.strip() or NO_REQUIREMENT,
        image_roles=image_roles(num_sources),
    )


def render_pairwise_prompt(
    instruction: str, requirement: str = "", template: str | None = DEFAULT_TEMPLATE
) -> str:
    """The judge's text for one pairwise item (which of two edits is better); ``template`` is the
    pairwise question (a built-in name or a ``file:`` id). A built-in one strips the texts and states
    an empty requirement; a file is filled in like a pointwise file (nothing stripped, blank stays
    blank). None (no pairwise question) raises :class:`NoPairwiseTemplateError`."""
    text = pairwise_template_text(template)
    if template.startswith(FILE_PREFIX):
        return text.format(prompt=instruction, requirement=requirement)
    requirement = requirement.strip() or NO_REQUIREMENT
    return text.format(instruction=instruction.strip(), requirement=requirement)


def render_item_prompt(item, template: str = DEFAULT_TEMPLATE, pairwise_template: str | None = AUTO) -> str:
    """The text of a judge item (anything with ``instruction``, ``requirement``, ``pairwise``):
    the pairwise question ``pairwise_template`` (see :func:`resolve_pairwise_template`) for a
    pairwise item, the pointwise ``template`` otherwise."""
    if item.pairwise:
        pairwise = resolve_pairwise_template(pairwise_template, template)
        return render_pairwise_prompt(item.instruction, item.requirement, pairwise)
    return render_prompt(item.instruction, item.requirement, template, len(item.sources))


def chat_messages(text: str, source_part: dict, *edited_parts: dict) -> list[dict]:
    """One user turn in the OpenAI/transformers chat format: the images in order (source image(s),
    edited image(s)), then text.

    The parts are the backend's image content entries (a bare ``{"type": "image"}`` placeholder for
    transformers, ``image_url`` data URIs for vLLM/OpenAI); a pairwise item has two edited images,
    an edit with several reference images several sources (``images.judge_images`` orders them).
    """
    content = [source_part, *edited_parts, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]
