"""The judge's prompt (docs/reward-server.md), versioned by name so a score can be traced to its prompt.

The judge sees one user turn: [source image(s), edited image, text]. The text states the instruction
and the item's requirement, asks for a 0-5 rating and for the number only.

Placeholders of a template: ``{instruction}``, ``{requirement}`` (an empty one is stated as
"none beyond the instruction") and ``{image_roles}``, the sentence saying which image is which. With
one source image it reads "The first image is the original image and the second image is the
edited result." (so the text of ``edit_r1_v1`` is unchanged from its first version); with n > 1
(several reference images) "The first n images are the original images (Picture 1 to Picture n)
and the last image is the edited result." Changing the wording
changes the reward, so a new wording gets a new name instead of silently replacing an old one;
the server reports the name it uses in ``/health``.
"""

from __future__ import annotations

from collections.abc import Mapping
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

PAIRWISE_TEMPLATES: Mapping[str, str] = MappingProxyType({"edit_r1_v1": _EDIT_R1_PAIR_V1})
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


def render_prompt(
    instruction: str, requirement: str = "", template: str = DEFAULT_TEMPLATE, num_sources: int = 1
) -> str:
    """The judge's text for one item; an empty requirement is stated as such rather than left blank."""
    if template not in TEMPLATES:
        raise KeyError(f"unknown prompt template {template!r}; known: {sorted(TEMPLATES)}")
    requirement = requirement.strip() or NO_REQUIREMENT
    return TEMPLATES[template].format(
        instruction=instruction.strip(), requirement=requirement, image_roles=image_roles(num_sources)
    )


def render_pairwise_prompt(instruction: str, requirement: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """The judge's text for one pairwise item (which of two edits is better)."""
    if template not in PAIRWISE_TEMPLATES:
        raise KeyError(
            f"prompt template {template!r} has no pairwise question; known: {sorted(PAIRWISE_TEMPLATES)}"
        )
    requirement = requirement.strip() or NO_REQUIREMENT
    return PAIRWISE_TEMPLATES[template].format(instruction=instruction.strip(), requirement=requirement)


def render_item_prompt(item, template: str = DEFAULT_TEMPLATE) -> str:
    """The text of a judge item (anything with ``instruction``, ``requirement``, ``pairwise``)."""
    if item.pairwise:
        return render_pairwise_prompt(item.instruction, item.requirement, template)
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
