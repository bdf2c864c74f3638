"""Fine-tune the toy judge (a small Qwen2.5-VL) so that its expected digit score tracks the rule score.

The reward server scores an edit as ``sum_k k p_k / 5`` with ``p = softmax(logits of "0".."5")`` at
the first generated position of the judge prompt (``reward_server/scoring.py``). Here the same
prompt is built exactly as the server builds it (``reward_server.prompt_template`` + the judge's
chat template, left padding) and the six digit logits are trained towards the two-hot
distribution of the ground truth ``s = toy_edit_scores(edit).score`` (``edit_r1.data.toy``)::

    y = 5 s,  q_floor(y) = 1 - (y - floor(y)),  q_floor(y)+1 = y - floor(y)   (so E_q[k] / 5 = s)
    loss = cross_entropy(softmax(digit logits), q) + (sum_k k p_k / 5 - s)^2 * mse_weight

(the squared error of the expected score itself speeds up learning the ranking).

The training edits span the whole quality range: perfect and partial edits, blends of source and
target, the right colour on the wrong shape, wrong colours, noise and blur, the unchanged source,
the hard negatives of a colour-only reward (a flat field of the requested colour, a kept shape
erased or moved, the colour bleeding over a kept shape), and edits of the base editor.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageFilter

from edit_r1.data.toy import (
    COLOR_TOLERANCE,
    COLORS,
    SHAPES,
    Scene,
    Task,
    _box_pixels,
    _object_masks,
    apply_task,
    encode_png,
    metadata_record,
    scene_from_record,
    toy_edit_scores,
)
from edit_r1.toyworld.images import scene_pairs


@dataclass(frozen=True)
class JudgeTraining:
    """``steps`` sets the one-cycle learning-rate schedule; training stops after ``stop_after``."""

    steps: int = 8000
    stop_after: int = 8000
    batch_size: int = 16
    learning_rate: float = 2e-3
    num_train: int = 4096
    num_train_editor: int = 2048
    editor_rounds: int = 3  # sets of base-editor edits, each of other scenes and sampling noise
    editor_share: float = 0.6  # share of each batch drawn from the editor's edits (0: in proportion)
    num_name_pairs: int = 768  # scenes of :func:`name_pair_triples` (two items each)
    name_pair_share: float = 0.3  # share of each batch drawn from them (the rest split as above)
    shape_token_weight: float = 1.0  # weight of :func:`shape_token_loss` (0: none)
    num_eval: int = 512
    eval_every: int = 500
    mse_weight: float = 4.0
    rank_weight: float = 1.0  # weight of :func:`rank_loss`
    auxiliary_weight: float = 1.0
    jpeg_share: float = 0.5  # share of training items seen as the client's JPEG (its default format)
    seed: int = 0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):  # ties share their average rank
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(np.asarray(a, dtype=np.float64)), ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra**2).sum() * (rb**2).sum()))


def _wrong_shape_edit(scene: Scene, task: Task, rng: np.random.Generator) -> Image.Image:
    """The requested colour applied to another shape (or the target shape in a wrong colour)."""
    others = [s.kind for s in scene.shapes if s.kind != task.shape]
    if task.kind == "recolor" and others:
        return apply_task(scene, Task("recolor", str(rng.choice(others)), task.color)).render()
    used = {scene.background, task.color} | {s.color for s in scene.shapes}
    wrong = str(rng.choice([c for c in COLORS if c not in used]))
    return apply_task(scene, Task(task.kind, task.shape, wrong)).render()


def _kept_shape_edit(scene: Scene, task: Task, rng: np.random.Generator, how: str) -> Image.Image:
    """The perfect edit with one kept shape erased (painted over with the edited background) or moved."""
    edited = apply_task(scene, task)
    kept = [s for s in edited.shapes if s.kind != task.shape]
    if not kept:
        return edited.render()
    victim = kept[int(rng.integers(len(kept)))]
    others = tuple(s for s in edited.shapes if s is not victim)
    if how == "erase":
        return replace(edited, shapes=others).render()
    x0, y0, x1, y1 = victim.box
    dx, dy = (int(v) for v in rng.integers(-8, 9, size=2))
    dx = int(np.clip(dx, -x0, scene.size - x1)) or 4 * (1 if x1 + 4 <= scene.size else -1)
    dy = int(np.clip(dy, -y0, scene.size - y1))
    moved = replace(victim, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return replace(edited, shapes=(*others, moved)).render()


def _bleed_edit(scene: Scene, task: Task, rng: np.random.Generator) -> np.ndarray:
    """The perfect edit with the requested colour bleeding over a kept shape's box (grown by 0-3 px)."""
    target = np.asarray(apply_task(scene, task).render(), dtype=np.float32)
    kept = [s for s in scene.shapes if s.kind != task.shape] or list(scene.shapes)
    x0, y0, x1, y1 = kept[int(rng.integers(len(kept)))].box
    grow = int(rng.integers(0, 4))
    rows = slice(max(0, y0 - grow), min(scene.size, y1 + grow))
    cols = slice(max(0, x0 - grow), min(scene.size, x1 + grow))
    colour = np.asarray(COLORS[task.color], dtype=np.float32)
    target[rows, cols] += rng.uniform(0.6, 1) * (colour - target[rows, cols])
    return target


# The synthetic edits and their shares: graded quality plus the hard negatives of a reward that
# only looks for the requested colour (flat field, erased / moved / wrong shape, bleeding colour).
DEGRADED_KINDS = {
    "perfect": 0.18,
    "blend": 0.12,
    "partial": 0.14,
    "wrong": 0.1,
    "source": 0.08,
    "flat": 0.1,
    "erase": 0.1,
    "move": 0.08,
    "bleed": 0.1,
}


def degraded_edit(
    scene: Scene, task: Task, rng: np.random.Generator, kinds: Sequence[str] | None = None
) -> Image.Image:
    """One edit of a random kind of :data:`DEGRADED_KINDS` (drawn by their shares, or uniformly from
    ``kinds`` when given), then noise and (sometimes) blur."""
    source = np.asarray(scene.render(), dtype=np.float32)
    target = np.asarray(apply_task(scene, task).render(), dtype=np.float32)
    if kinds is None:
        kind = rng.choice(list(DEGRADED_KINDS), p=list(DEGRADED_KINDS.values()))
    else:
        unknown = set(kinds) - set(DEGRADED_KINDS)
        if unknown:
            raise ValueError(f"unknown edit kinds {sorted(unknown)}; known: {sorted(DEGRADED_KINDS)}")
        kind = rng.choice(list(kinds))
    if kind == "perfect":
        edit = target
    elif kind == "blend":
        edit = source + rng.uniform(0.6, 1) * (target - source)  # the rule's colour tolerance is tight
    elif kind == "partial":
        mask = np.zeros(source.shape[:2], dtype=np.float32)
        h, w = mask.shape
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y0 : y0 + int(rng.integers(4, h)), x0 : x0 + int(rng.integers(4, w))] = 1
        edit = source + mask[..., None] * (target - source)
    elif kind == "wrong":
        edit = np.asarray(_wrong_shape_edit(scene, task, rng), dtype=np.float32)
    elif kind == "flat":  # the whole image in the requested colour, sometimes a faint trace of the scene
        flat = np.broadcast_to(np.asarray(COLORS[task.color], dtype=np.float32), source.shape)
        edit = flat + rng.choice([0.0, 0.0, 0.15, 0.3]) * (target - flat)
    elif kind in ("erase", "move"):
        edit = np.asarray(_kept_shape_edit(scene, task, rng, str(kind)), dtype=np.float32)
    elif kind == "bleed":
        edit = _bleed_edit(scene, task, rng)
    else:
        edit = source
    edit = edit + rng.normal(0, rng.choice([0, 4, 8, 16]), edit.shape)
    image = Image.fromarray(np.clip(edit, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return image


def synthetic_triples(num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, edits, records) of ``num`` toy edits of random quality."""
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    rng = np.random.default_rng(seed)
    edits = [degraded_edit(scene, task, rng) for scene, task in examples]
    return sources, edits, judge_records(examples)


def name_pair_triples(num: int, size: int, seed: int):
    """(sources, edits, records) of ``2 num`` items from ``num`` shape recolours: each edit is
    another shape of the scene recoloured, shown under the instruction that names the shape it
    did not touch (the wrong object) and then under the one naming the shape it recoloured (the
    perfect edit). The two differ only in the named shape, so only reading it tells them apart."""
    examples, _, _ = scene_pairs(num, size, seed, ("recolor",))
    rng = np.random.default_rng(seed)
    shown, sources, edits = [], [], []
    for scene, task in examples:
        other = str(rng.choice([s.kind for s in scene.shapes if s.kind != task.shape]))
        recoloured = Task("recolor", other, task.color)
        edit = apply_task(scene, recoloured).render()
        for named in (task, recoloured):
            shown.append((scene, named))
            sources.append(scene.render())
            edits.append(edit)
    return sources, edits, judge_records(shown)


def shape_token_targets(records: Sequence[dict], grid: int) -> torch.Tensor:
    """(N, grid * grid, len(SHAPES)): for each token of the judge's source image (its merged
    patches, ``grid`` x ``grid``, row-major), the share of the token's pixels that each shape kind
    of :data:`SHAPES` covers in the source scene."""
    rows = []
    for record in records:
        scene, _ = scene_from_record(record["scene"])
        cell = scene.size // grid
        coverage = np.zeros((grid, grid, len(SHAPES)))
        for kind, mask in _object_masks(scene)[1:]:
            coverage[..., SHAPES.index(kind)] += mask.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
        rows.append(coverage.reshape(grid * grid, len(SHAPES)))
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def judge_record(scene: Scene, task: Task) -> dict:
    """The toy metadata record of the item plus ``shape_boxes`` (kind -> box as fractions), which
    only the judge's auxiliary targets read."""
    size = scene.size
    boxes = {s.kind: [v / size for v in s.box] for s in scene.shapes}
    return dict(metadata_record(scene, task, ""), shape_boxes=boxes)


@functools.cache
def _world_vae():
    from edit_r1.toyworld.world import vae_reproduction

    return vae_reproduction()


def judge_records(examples) -> list[dict]:
    """:func:`judge_record` of each example with the world VAE's reproductions of its source and
    perfect edit (``reference_png`` / ``reference_target_png``), as the RL dataset's records carry."""
    from edit_r1.toyworld.editor import reference_images

    references = reference_images(examples, _world_vae())
    records = []
    for i, (scene, task) in enumerate(examples):
        record = judge_record(scene, task)
        record["reference_png"] = encode_png(references[i])
        record["reference_target_png"] = encode_png(references[len(examples) + i])
        records.append(record)
    return records


def two_hot(scores: torch.Tensor, max_rating: int = 5) -> torch.Tensor:
    """(B,) scores in [0, 1] -> (B, max_rating + 1) two-hot distributions with mean rating 5 s."""
    y = scores.clamp(0, 1) * max_rating
    low = y.floor().long().clamp(max=max_rating - 1)
    frac = y - low
    q = torch.zeros(len(y), max_rating + 1)
    q.scatter_(1, low[:, None], (1 - frac)[:, None])
    q.scatter_add_(1, (low + 1)[:, None], frac[:, None])
    return q


class JudgeInputs:
    """The reward server's transformers-backend prompt for (source, edit, instruction, requirement)."""

    def __init__(self, processor, template: str) -> None:
        from reward_server.scoring import digit_token_ids

        self.processor, self.template = processor, template
        processor.tokenizer.padding_side = "left"
        self.digit_ids = digit_token_ids(processor.tokenizer)

    def __call__(self, sources, edits, records) -> dict[str, torch.Tensor]:
        from reward_server.prompt_template import render_prompt

        texts = [render_prompt(r["prompt"], r["requirement"], self.template) for r in records]
        return self.processor_inputs(texts, list(zip(sources, edits, strict=True)))

    def processor_inputs(self, texts: list[str], image_rows: list[tuple]) -> dict[str, torch.Tensor]:
        """The processor's batch for one user turn per item, [its images in order, its text], with
        the chat template and left padding the transformers backend uses."""
        from reward_server.prompt_template import chat_messages

        placeholder = {"type": "image"}
        prompts = [
            self.processor.apply_chat_template(
                chat_messages(text, *[placeholder] * len(images)), tokenize=False, add_generation_prompt=True
            )
            for text, images in zip(texts, image_rows, strict=True)
        ]
        images = [image for row in image_rows for image in row]
        return dict(self.processor(text=prompts, images=images, padding=True, return_tensors="pt"))


def digit_logits(judge, inputs: dict[str, torch.Tensor], digit_ids: list[int]) -> torch.Tensor:
    """(B, 6) logits of "0".."5" at the last (first generated) position, as the server reads them."""
    return judge(**inputs, logits_to_keep=1).logits[:, -1, digit_ids].float()


def expected_scores(logits: torch.Tensor) -> torch.Tensor:
    """sum_k k softmax(logits)_k / 5."""
    return (torch.softmax(logits, dim=-1) * torch.arange(logits.shape[-1])).sum(-1) / (logits.shape[-1] - 1)


def rule_labels(edits, records) -> torch.Tensor:
    """The ground truth ``toy_edit_scores(edit, record).score`` of each edit (the record's VAE references)."""
    return torch.tensor(
        [toy_edit_scores(e, r).score for e, r in zip(edits, records, strict=True)], dtype=torch.float32
    )


PALETTE = np.asarray(list(COLORS.values()), dtype=np.float64) / 255.0  # (8, 3)


def palette_shares(pixels: np.ndarray) -> np.ndarray:
    """(8,) soft share of the pixels (..., 3) in [0, 1] showing each palette colour, with the rule
    score's colour match ``exp(-(||p - c|| / sqrt(3) / 0.15)^2)`` (``toy_target_color_score``)."""
    distance = np.linalg.norm(pixels.reshape(-1, 1, 3) - PALETTE[None], axis=-1) / np.sqrt(3.0)
    return np.exp(-((distance / COLOR_TOLERANCE) ** 2)).mean(0)


def _shape_facts(pixels: np.ndarray, record: dict) -> np.ndarray:
    """(3 + 3 x 8,): the named shape (one-hot, zeros for the background) and, per shape kind, the
    palette shares of ``pixels`` inside that shape's box (zeros when the scene lacks it)."""
    named = [float(f"the {kind} " in (record["prompt"] + " ")) for kind in SHAPES]
    shares = []
    for kind in SHAPES:
        box = record.get("shape_boxes", {}).get(kind)
        if box is None:
            shares.append(np.zeros(len(PALETTE)))
        else:
            rows, cols = _box_pixels(list(box), *pixels.shape[:2])
            shares.append(palette_shares(pixels[rows, cols]))
    return np.concatenate([named, *shares])


def auxiliary_targets(sources, edits, records) -> torch.Tensor:
    """(N, 85) facts the judge's last position is also trained to state (training only, through a
    linear head that is not saved): the requested colour (one-hot over the palette), the palette
    shares of the whole edit, of the whole source, and of the edit inside the target box; the
    named shape and the palette shares of the edit inside each shape's box (:func:`_shape_facts`),
    the same shares of the source (what preserving means), and the ground truth's two parts.

    The rule score needs the requested colour *and* what the images show; trained on the score
    alone, a judge from scratch has to discover both routes at once and stays at chance for
    thousands of steps (docs/toyworld.md); stating them separately opens each route on its own.
    """
    rows = []
    for source, edit, record in zip(sources, edits, records, strict=True):
        color = np.asarray(record["target_color"], dtype=np.float64) / 255.0
        wanted = (np.linalg.norm(PALETTE - color, axis=-1) < 1e-6).astype(np.float64)
        edit_pixels = np.asarray(edit.convert("RGB"), dtype=np.float64) / 255.0
        source_pixels = np.asarray(source.convert("RGB"), dtype=np.float64) / 255.0
        box_rows, box_cols = _box_pixels(list(record["target_box"]), *edit_pixels.shape[:2])
        truth = toy_edit_scores(edit, record)
        rows.append(
            np.concatenate(
                [
                    wanted,
                    palette_shares(edit_pixels),
                    palette_shares(source_pixels),
                    palette_shares(edit_pixels[box_rows, box_cols]),
                    _shape_facts(edit_pixels, record),
                    _shape_facts(source_pixels, record)[len(SHAPES) :],
                    [truth.success, truth.preservation],
                ]
            )
        )
    return torch.tensor(np.stack(rows), dtype=torch.float32)


IMAGE_KEYS = ("pixel_values", "image_grid_thw")


@dataclass
class EncodedItems:
    """The server's processor outputs for a whole set of items, computed once and indexed per batch.

    ``tokens`` holds every per-token output of the processor (``input_ids``, ``attention_mask``,
    ``mm_token_type_ids``, from which the model derives the images' 3-D positions), (N, L) each,
    left-padded to the longest prompt of the set; ``pixel_values`` (N, P, D) holds the patches of
    each item's images (every toy image has the same size, so the same P) and ``image_grid_thw``
    (N, I, 3) their grids; ``shape_tokens`` what the source image's tokens show
    (:func:`shape_token_targets`). :meth:`batch` gives exactly the dict the processor returns for those
    items, except for extra all-padding columns on the left, which the judge ignores (positions
    follow the attention mask; ``tests/integration/test_toyworld.py`` checks the scores agree).
    """

    tokens: dict[str, torch.Tensor]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    labels: torch.Tensor
    auxiliary: torch.Tensor
    shape_tokens: torch.Tensor | None = None  # :func:`shape_token_targets`, where the set has them

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows)
        mask = self.tokens["attention_mask"][rows]
        first = int(mask.any(0).nonzero()[0])  # drop columns that are padding in every row
        return {
            **{key: value[rows, first:] for key, value in self.tokens.items()},
            "pixel_values": self.pixel_values[rows].flatten(0, 1),
            "image_grid_thw": self.image_grid_thw[rows].flatten(0, 1),
        }


def _left_pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value) for t in tensors])


def _pad_tokens(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate per-token tensors, left-padding ``input_ids`` with ``pad_id`` and the rest with 0."""
    return {key: _left_pad([p[key] for p in parts], pad_id if key == "input_ids" else 0) for key in parts[0]}


def as_received(image_lists: Sequence[list], jpeg_share: float, seed: int) -> list[list]:
    """The images as the server decodes them: ``image_lists`` holds one list per role (source,
    edit(s)), item i at position i of each; for a random ``jpeg_share`` of the items, all of that
    item's images go through the reward client's JPEG encoding (its default format, quality 75)."""
    from edit_r1.rewards.client import encode_image

    def jpeg(image: Image.Image) -> Image.Image:
        return Image.open(io.BytesIO(encode_image(image, "jpeg"))).convert("RGB")

    rng = np.random.default_rng(seed)
    chosen = rng.random(len(image_lists[0])) < jpeg_share
    return [[jpeg(x) if c else x for x, c in zip(images, chosen, strict=True)] for images in image_lists]


def encode_items(
    encode: JudgeInputs, sources, edits, records, jpeg_share: float = 0.0, seed: int = 0, chunk: int = 256
) -> EncodedItems:
    """Run the server's processor (:class:`JudgeInputs`) over all items once, in chunks; the labels
    are the rule scores of the edits as made, the inputs the images as received (:func:`as_received`)."""
    labels, auxiliary = rule_labels(edits, records), auxiliary_targets(sources, edits, records)
    sources, edits = as_received([sources, edits], jpeg_share, seed)
    items = encode_in_chunks(
        lambda part: encode(sources[part], edits[part], records[part]),
        len(edits),
        encode.processor.tokenizer.pad_token_id,
        labels,
        auxiliary,
        chunk,
    )
    _, height, width = items.image_grid_thw[0, 0].tolist()  # in patches, merged 2 x 2 into tokens
    if height != width:
        raise ValueError(f"the toy judge's images are square; got a grid of {height} x {width} patches")
    items.shape_tokens = shape_token_targets(records, height // 2)
    return items


def encode_in_chunks(
    encode_part, num: int, pad_id: int, labels: torch.Tensor, auxiliary: torch.Tensor, chunk: int = 256
) -> EncodedItems:
    """:class:`EncodedItems` of ``num`` items from ``encode_part(slice)`` (the processor's outputs
    for those items, every item with the same number of images)."""
    tokens, pixels, grids = [], [], []
    for start in range(0, num, chunk):
        inputs = encode_part(slice(start, start + chunk))
        rows = len(inputs["input_ids"])
        tokens.append({key: value for key, value in inputs.items() if key not in IMAGE_KEYS})
        if any(value.shape[0] != rows for value in tokens[-1].values()):
            raise ValueError(f"unexpected processor outputs {sorted(inputs)}: not per-token tensors")
        grids.append(inputs["image_grid_thw"].reshape(rows, -1, 3))
        pixels.append(inputs["pixel_values"].reshape(rows, -1, inputs["pixel_values"].shape[-1]))
    return EncodedItems(
        tokens=_pad_tokens(tokens, pad_id),
        pixel_values=torch.cat(pixels),
        image_grid_thw=torch.cat(grids),
        labels=labels,
        auxiliary=auxiliary,
    )


@torch.no_grad()
def encoded_scores(judge, items: EncodedItems, digit_ids: list[int], batch: int = 128) -> np.ndarray:
    """The judge's expected scores of every encoded item."""
    out = [
        expected_scores(digit_logits(judge, items.batch(range(s, min(s + batch, len(items)))), digit_ids))
        for s in range(0, len(items), batch)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def judge_scores(judge, encode: JudgeInputs, sources, edits, records, batch: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(edits), batch):
        chunk = slice(start, start + batch)
        inputs = encode(sources[chunk], edits[chunk], records[chunk])
        out.append(expected_scores(digit_logits(judge, inputs, encode.digit_ids)))
    return torch.cat(out).numpy()


def judge_loss(logits: torch.Tensor, target: torch.Tensor, mse_weight: float) -> torch.Tensor:
    """cross_entropy(two_hot(s), softmax(logits)) + mse_weight * (E[k] / 5 - s)^2, batch mean."""
    cross_entropy = -(two_hot(target) * torch.log_softmax(logits, -1)).sum(-1).mean()
    return cross_entropy + mse_weight * ((expected_scores(logits) - target) ** 2).mean()


def rank_loss(
    logits: torch.Tensor, target: torch.Tensor, scale: float = 20.0, margin: float = 0.01
) -> torch.Tensor:
    """RankNet's pairwise loss on the expected scores ``e`` of the batch: the mean over the pairs whose
    labels differ by more than ``margin`` of ``softplus(-scale (e_i - e_j) sign(s_i - s_j))``.

    Spearman only asks for the order; the two-hot and squared-error losses fit each score on its
    own, and most base-editor edits crowd into a narrow low band (success of a few per cent) where
    their errors, not the order, dominate those losses."""
    e = expected_scores(logits)
    difference = target[:, None] - target[None, :]
    decided = difference.abs() > margin
    if not decided.any():
        return e.sum() * 0.0
    pairs = -scale * (e[:, None] - e[None, :]) * difference.sign()
    return torch.nn.functional.softplus(pairs[decided]).mean()


def answer_logits_and_facts(
    judge,
    head: torch.nn.Module,
    items: EncodedItems,
    rows: torch.Tensor,
    answer_ids: list[int],
    token_head: torch.nn.Module | None = None,
    token_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's logits of ``answer_ids`` at the first generated position of ``items[rows]``, and
    the auxiliary loss ``||head(last hidden state) - items.auxiliary[rows]||^2`` (batch mean), plus
    ``token_weight`` x :func:`shape_token_loss` through ``token_head`` when it is given."""
    inputs = items.batch(rows)
    output = judge(**inputs, logits_to_keep=1, output_hidden_states=True)
    facts = head(output.hidden_states[-1][:, -1])
    auxiliary = ((facts - items.auxiliary[rows]) ** 2).sum(-1).mean()
    if token_head is not None:
        image_token = judge.config.image_token_id
        auxiliary = auxiliary + token_weight * shape_token_loss(
            token_head, output.hidden_states[0], inputs["input_ids"] == image_token, items.shape_tokens[rows]
        )
    return output.logits[:, -1, answer_ids].float(), auxiliary


def shape_token_loss(
    token_head: torch.nn.Module, embeddings: torch.Tensor, image_mask: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``sum_{t, k} (token_head(e_t)_k - c_{t,k})^2``, batch mean: ``e_t`` is the judge's input
    embedding (the vision tower's output) of token ``t`` of the first (source) image, where
    ``image_mask`` marks image tokens, and ``c_{t,k}`` the share of it shape kind ``k`` covers.

    The judge must find the shape the instruction names; trained on scores alone, its vision tower
    told a circle from a square hardly better than chance (docs/toyworld.md), and it scored a
    recolour of the wrong shape like the perfect edit."""
    count = targets.shape[1]
    first = torch.stack([row[mask][:count] for row, mask in zip(embeddings, image_mask, strict=True)])
    return ((token_head(first) - targets) ** 2).sum((1, 2)).mean()


def train_judge(
    judge,
    digit_ids: list[int],
    train: EncodedItems,
    held_out: EncodedItems,
    settings: JudgeTraining,
    on_eval=None,
    weights: torch.Tensor | None = None,
) -> list[tuple[int, float]]:
    """Train ``judge`` in place on the encoded ``train`` items, each batch drawn uniformly or in
    proportion to ``weights`` (one per item); returns (step, held-out Spearman)."""
    torch.manual_seed(settings.seed)
    hidden = judge.config.text_config.hidden_size
    head = torch.nn.Linear(hidden, train.auxiliary.shape[1])
    token_head = None
    if settings.shape_token_weight > 0 and train.shape_tokens is not None:
        token_head = torch.nn.Linear(hidden, len(SHAPES))
    parameters = [*judge.parameters(), *head.parameters(), *(token_head.parameters() if token_head else [])]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history, start = [], time.perf_counter()
    judge.train()
    for step in range(1, min(settings.steps, settings.stop_after) + 1):
        if weights is None:
            rows = torch.randint(0, len(train), (settings.batch_size,), generator=generator)
        else:
            rows = torch.multinomial(weights, settings.batch_size, replacement=True, generator=generator)
        answers, auxiliary = answer_logits_and_facts(
            judge, head, train, rows, digit_ids, token_head, settings.shape_token_weight
        )
        loss = judge_loss(answers, train.labels[rows], settings.mse_weight)
        loss = loss + settings.auxiliary_weight * auxiliary
        if settings.rank_weight > 0:
            loss = loss + settings.rank_weight * rank_loss(answers, train.labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if step % settings.eval_every == 0:
            judge.eval()
            rho = spearman(encoded_scores(judge, held_out, digit_ids), held_out.labels.numpy())
            judge.train()
            history.append((step, rho))
            if on_eval is not None:
                on_eval(step, rho)
            print(
                f"judge step {step}: loss {loss.item():.4f} held-out Spearman {rho:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    judge.eval()
    return history


# How the base editor's judge-training edits are drawn, cycled over chunks of 32 items:
# (solver, number of steps, SDE noise level or None for deterministic, relative weight noise).
# Deterministic Euler at 1-8 steps spans poor to best; dpm2 and the eta-0.7 SDE at 4 steps are the
# trainer's rollout samplers (config/base.py); weight noise stands in for the policy moving under RL.
EDITOR_SAMPLERS: tuple[tuple[str, int, float | None, float], ...] = (
    ("flow", 4, None, 0.0),
    ("flow", 4, 0.7, 0.0),
    ("dpm2", 4, None, 0.0),
    ("flow", 2, None, 0.0),
    ("flow", 4, 0.7, 0.05),
    ("flow", 8, None, 0.0),
    ("flow", 4, None, 0.1),
    ("flow", 1, None, 0.0),
    ("flow", 4, 0.7, 0.2),
    ("flow", 3, None, 0.03),
)


@torch.no_grad()
def sample_edits(policy, cond, solver: str, steps: int, noise_level: float | None, seed: int) -> torch.Tensor:
    """Edits of ``cond`` with ``solver`` (SDE with ``noise_level``, or deterministic when None)."""
    from edit_r1.sampling.sampler import sample
    from edit_r1.sampling.schedules import sigma_schedule

    sigmas = sigma_schedule(steps, policy.image_seq_len, policy.scheduler_config)
    generator = torch.Generator().manual_seed(seed)
    result = sample(
        lambda z, s: policy.velocity(z, s, cond),
        policy.initial_noise(len(cond), generator=generator),
        sigmas,
        solver=solver,
        deterministic=noise_level is None,
        noise_level=noise_level or 0.0,
        generator=generator,
    )
    return policy.decode(result.latents)


@torch.no_grad()
def _perturbed(transformer, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """Add Gaussian noise of ``scale`` x each weight matrix's std; returns the original weights."""
    saved = {name: p.detach().clone() for name, p in transformer.named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    for p in transformer.parameters():
        if p.ndim >= 2 and scale > 0:
            p.add_(torch.randn(p.shape, generator=generator) * p.std() * scale)
    return saved


def editor_triples(
    pipeline_dir, num: int, size: int, seed: int, tasks: tuple[str, ...], sample_seed: int | None = None
):
    """(sources, edits, records) of base-editor edits drawn as in :data:`EDITOR_SAMPLERS`.

    ``seed`` fixes the scenes and the weight noise, ``sample_seed`` (default ``seed``) the sampling
    noise: two calls differing only in ``sample_seed`` give two edits of each item by the same
    sampler and policy, as two rollouts of one RL group."""
    from edit_r1.toyworld import world
    from edit_r1.toyworld.editor import encode_pairs
    from edit_r1.toyworld.images import to_images

    sample_seed = seed if sample_seed is None else sample_seed
    policy = world.load_policy(pipeline_dir, use_lora=False)
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    cond, _ = encode_pairs(policy, examples, sources, sources)
    edits = []
    for chunk, start in enumerate(range(0, num, 32)):
        rows = list(range(start, min(num, start + 32)))
        solver, steps, noise_level, weight_noise = EDITOR_SAMPLERS[chunk % len(EDITOR_SAMPLERS)]
        saved = _perturbed(policy.transformer, weight_noise, seed + start)
        edits += to_images(
            sample_edits(policy, cond.index_select(rows), solver, steps, noise_level, sample_seed + start)
        )
        policy.transformer.load_state_dict(saved)
    return sources, edits, judge_records(examples)


@dataclass(frozen=True)
class JudgeArchitecture:
    """The toy judge's size. Vision: ``patch_size`` 4 and merge 2, so a 32 px image is 8 x 8
    patches -> 16 tokens (the real 14 px patches made it 2 x 2 tokens after an upscale to 56 px)."""

    hidden: int = 64
    layers: int = 3
    heads: int = 2  # head size 32: vLLM's CPU attention refuses head size 16
    vision_hidden: int = 64
    vision_depth: int = 2
    patch_size: int = 4
    rope_theta: float = 10.0


def judge_processor_settings(arch: JudgeArchitecture, size: int) -> dict:
    """Image-processor entries of the judge folder: every image is resized to ``size``^2 pixels
    (min = max pixels), then cut into ``arch.patch_size`` patches merged 2 x 2."""
    pixels = size * size
    return {
        "patch_size": arch.patch_size,
        "merge_size": 2,
        "min_pixels": pixels,
        "max_pixels": pixels,
        "size": {"shortest_edge": pixels, "longest_edge": pixels},
    }


def build_judge_model(out, seed: int, arch: JudgeArchitecture = JudgeArchitecture()):
    """A fresh toy judge (Qwen2.5-VL of ``arch``) with its tokenizer and processor files in ``out``."""
    from pathlib import Path

    from edit_r1.models import tiny
    from edit_r1.toyworld.world import SIZE, world_tokenizer

    tokenizer = world_tokenizer(named_vision_tokens=False)
    head_dim = arch.hidden // arch.heads
    # the text model's rotary split (temporal, height, width): every image axis gets frequencies
    third = head_dim // 6
    mrope = [head_dim // 2 - 2 * third, third, third] if head_dim >= 12 else None
    vision = {
        "patch_size": arch.patch_size,
        "depth": arch.vision_depth,
        "window_size": SIZE * 4,  # one attention window covers the whole image
        "fullatt_block_indexes": list(range(arch.vision_depth)),
    }
    judge = tiny._qwen2_5_vl(
        tokenizer,
        hidden=arch.hidden,
        layers=arch.layers,
        seed=21 + seed,
        vision_hidden=arch.vision_hidden,
        heads=arch.heads,
        vision=vision,
        mrope_section=mrope,
        rope_theta=arch.rope_theta,
    )
    judge.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny._write_real_style_processor_files(Path(out), judge_processor_settings(arch, SIZE))
    return judge


def train_world_judge(pipeline_dir, out, settings: JudgeTraining) -> dict:
    """Train the toy judge on synthetic and base-editor edits; save it; return its held-out rank
    correlations (on synthetic edits and on edits of the base editor in ``pipeline_dir``)."""
    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    start = time.perf_counter()
    judge = build_judge_model(out, settings.seed)
    encode = JudgeInputs(load_qwen_vl_processor(out), world.JUDGE_TEMPLATE)
    sets = judge_data(pipeline_dir, encode, settings)
    data_seconds = time.perf_counter() - start
    print(f"judge: {len(sets['train'])} training items encoded in {data_seconds:.0f} s", flush=True)
    weights = sampling_weights(settings)
    history = train_judge(
        judge, encode.digit_ids, sets["train"], sets["held_out_base_editor"], settings, weights=weights
    )
    judge.save_pretrained(out, safe_serialization=True)
    result = {
        "spearman_history_base_editor": [[s, round(r, 4)] for s, r in history],
        "steps": settings.stop_after,
        "num_train": len(sets["train"]),
        "data_seconds": round(data_seconds),
    }
    result.update(held_out_spearmans(judge, sets, encode.digit_ids))
    result["hard_negatives"] = hard_negative_margins(judge, encode)
    result["name_binding"] = name_binding(judge, encode)
    print(f"judge: {result}", flush=True)
    return result


def hard_negatives(num: int, size: int, seed: int, tasks: tuple[str, ...]):
    """(sources, records, {kind: edits}) of ``num`` items with the perfect edit and three hard
    negatives of each: a flat field of the requested colour, the wrong object edited
    (:func:`_wrong_shape_edit`) and the unchanged source."""
    examples, sources, _ = scene_pairs(num, size, seed, tasks)
    rng = np.random.default_rng(seed)
    edits = {
        "perfect": [apply_task(scene, task).render() for scene, task in examples],
        "flat": [Image.new("RGB", (size, size), COLORS[task.color]) for _, task in examples],
        "wrong_object": [_wrong_shape_edit(scene, task, rng) for scene, task in examples],
        "source": list(sources),
    }
    return sources, [metadata_record(scene, task, "") for scene, task in examples], edits


def perfect_above(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """``perfect_above_<kind>``: the share of items whose perfect edit scores above their ``kind`` edit."""
    return {
        f"perfect_above_{kind}": round(float((scores["perfect"] > value).mean()), 4)
        for kind, value in scores.items()
        if kind != "perfect"
    }


def hard_negative_margins(judge, encode: JudgeInputs, num: int = 128, seed: int = 434343) -> dict[str, float]:
    """:func:`perfect_above` of the judge's in-process scores of :func:`hard_negatives` (held-out
    scenes of ``seed``, JPEG-coded as the reward client sends them), and each kind's mean score."""
    from edit_r1.toyworld import world

    sources, records, edits = hard_negatives(num, world.SIZE, seed, world.TASKS)
    scores = {}
    for kind, images in edits.items():
        received_sources, received = as_received([sources, images], 1.0, seed)
        scores[kind] = judge_scores(judge, encode, received_sources, received, records)
    means = {f"mean_{kind}": round(float(v.mean()), 4) for kind, v in scores.items()}
    return {**perfect_above(scores), **means}


def name_binding(judge, encode: JudgeInputs, num: int = 256, seed: int = 434343) -> dict[str, float]:
    """How the judge reads which shape is named: on :func:`name_pair_triples` of held-out scenes
    (JPEG-coded as the client sends them), the mean score of each edit under the name of the shape
    it left alone and under the name of the shape it recoloured, and the share of edits that score
    higher under the right name."""
    from edit_r1.toyworld import world

    sources, edits, records = name_pair_triples(num, world.SIZE, seed)
    received_sources, received = as_received([sources, edits], 1.0, seed)
    scores = judge_scores(judge, encode, received_sources, received, records)
    wrong, right = scores[0::2], scores[1::2]
    return {
        "mean_named_other_shape": round(float(wrong.mean()), 4),
        "mean_named_recoloured_shape": round(float(right.mean()), 4),
        "right_name_higher": round(float((right > wrong).mean()), 4),
    }


def held_out_spearmans(judge, sets: dict[str, EncodedItems], digit_ids: list[int]) -> dict[str, float]:
    """``held_out_spearman_<name>``: the rank correlation of the judge's expected scores with the
    rule on ``sets["held_out_synthetic"]`` and ``sets["held_out_base_editor"]`` (4 decimals)."""
    result = {}
    for name in ("synthetic", "base_editor"):
        held = sets[f"held_out_{name}"]
        rho = spearman(encoded_scores(judge, held, digit_ids), held.labels.numpy())
        result[f"held_out_spearman_{name}"] = round(rho, 4)
    return result


def concat_items(sets: list[EncodedItems], pad: int) -> EncodedItems:
    """The items of ``sets`` as one set (per-token tensors left-padded with ``pad``)."""
    return EncodedItems(
        tokens=_pad_tokens([s.tokens for s in sets], pad),
        pixel_values=torch.cat([s.pixel_values for s in sets]),
        image_grid_thw=torch.cat([s.image_grid_thw for s in sets]),
        labels=torch.cat([s.labels for s in sets]),
        auxiliary=torch.cat([s.auxiliary for s in sets]),
        shape_tokens=None
        if any(s.shape_tokens is None for s in sets)
        else torch.cat([s.shape_tokens for s in sets]),
    )


def sampling_weights(settings: JudgeTraining) -> torch.Tensor | None:
    """Per-item sampling weights of :func:`judge_data`'s training set (synthetic items, the
    editor's edits, the name pairs): a batch row is a name pair with probability
    ``name_pair_share``, else an editor edit with probability ``editor_share`` (None: uniform)."""
    if settings.editor_share <= 0:
        return None
    num_editor = settings.num_train_editor * settings.editor_rounds
    num_pairs = 2 * settings.num_name_pairs
    rest = 1 - settings.name_pair_share if num_pairs else 1.0
    parts = [
        torch.full((settings.num_train,), rest * (1 - settings.editor_share) / settings.num_train),
        torch.full((num_editor,), rest * settings.editor_share / num_editor),
        torch.full((num_pairs,), settings.name_pair_share / max(num_pairs, 1)),
    ]
    return torch.cat(parts).double()


def judge_data(pipeline_dir, encode: JudgeInputs, settings: JudgeTraining) -> dict[str, EncodedItems]:
    """Encoded training items (synthetic edits, then ``editor_rounds`` sets of base-editor edits,
    each of other scenes and sampling noise, then :func:`name_pair_triples`) and the two held-out sets (scenes of seeds 5000 and
    7000, which no training set uses)."""
    from edit_r1.toyworld import world

    seed, size, tasks = settings.seed, world.SIZE, world.TASKS
    synthetic = synthetic_triples(settings.num_train, size, 4000 + seed, tasks)
    parts = [encode_items(encode, *synthetic, jpeg_share=settings.jpeg_share, seed=seed)]
    for round_ in range(settings.editor_rounds):  # round 0: the scenes of seed 6000, as before
        scenes = 6000 + seed if round_ == 0 else 20_000 + 10_000 * round_ + seed
        edited = editor_triples(pipeline_dir, settings.num_train_editor, size, scenes, tasks)
        parts.append(encode_items(encode, *edited, jpeg_share=settings.jpeg_share, seed=seed + 1 + round_))
    if settings.num_name_pairs:
        pairs = name_pair_triples(settings.num_name_pairs, size, 9200 + seed)
        parts.append(encode_items(encode, *pairs, jpeg_share=settings.jpeg_share, seed=seed + 100))
    return {"train": concat_items(parts, encode.processor.tokenizer.pad_token_id)} | held_out_data(
        pipeline_dir, encode, settings
    )


def held_out_data(pipeline_dir, encode: JudgeInputs, settings: JudgeTraining) -> dict[str, EncodedItems]:
    """The held-out sets: ``num_eval`` synthetic edits (scenes of seed 5000) and base-editor edits
    drawn like the training ones (scenes of seed 7000), both as PNG."""
    from edit_r1.toyworld import world

    seed, size, tasks = settings.seed, world.SIZE, world.TASKS
    return {
        "held_out_synthetic": encode_items(
            encode, *synthetic_triples(settings.num_eval, size, 5000 + seed, tasks)
        ),
        "held_out_base_editor": encode_items(
            encode, *editor_triples(pipeline_dir, settings.num_eval, size, 7000 + seed, tasks)
        ),
    }


def evaluate_judge(judge_dir, pipeline_dir, settings: JudgeTraining) -> dict:
    """The build's held-out numbers of the judge folder ``judge_dir`` on the edits of the editor
    in ``pipeline_dir``: :func:`held_out_spearmans` and :func:`hard_negative_margins`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor
    from edit_r1.toyworld import world

    judge = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge_dir).eval()
    encode = JudgeInputs(load_qwen_vl_processor(judge_dir), world.JUDGE_TEMPLATE)
    result = held_out_spearmans(judge, held_out_data(pipeline_dir, encode, settings), encode.digit_ids)
    return dict(
        result, hard_negatives=hard_negative_margins(judge, encode), name_binding=name_binding(judge, encode)
    )
