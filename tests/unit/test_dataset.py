"""EditDataset (jsonl contract, errors, group keys), centre crop, the toy generator and its score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edit_r1.data.dataset import DatasetError, EditDataset, center_crop_resize
from edit_r1.data.toy import (
    COLORS,
    REPEAT_EVERY,
    apply_task,
    generate_examples,
    main,
    toy_target_color_score,
    write_toy_dataset,
)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_train=12, num_test=4, size=32, seed=3)


def _write_dataset(root: Path, lines: list[str], images: tuple[str, ...] = ("a.png",)) -> Path:
    for name in images:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / name)
    (root / "train_metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _line(**fields) -> str:
    record = {"prompt": "make it red", "image": "a.png", "requirement": "only the colour changes"}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None})


# ---------------------------------------------------------------------------- dataset contract


def test_toy_round_trip(toy_dir: Path) -> None:
    train, test = EditDataset(toy_dir, "train"), EditDataset(toy_dir, "test")
    assert (len(train), len(test)) == (12, 4)
    lines = [json.loads(t) for t in (toy_dir / "train_metadata.jsonl").read_text().splitlines()]
    for i, record in enumerate(lines):
        item = train[i]
        assert (item.index, item.prompt, item.requirement) == (i, record["prompt"], record["requirement"])
        assert item.image_relpath == record["image"] and item.image_path == toy_dir / record["image"]
        assert item.group_key == (record["prompt"], record["image"]) == train.group_keys[i]
        assert item.extra["target_color"] == record["target_color"] and "prompt" not in item.extra
        assert item.image.mode == "RGB" and item.image.size == (32, 32)


def test_same_instruction_on_different_images_is_different_groups(toy_dir: Path) -> None:
    dataset = EditDataset(toy_dir, "train")
    prompts = [key[0] for key in dataset.group_keys]
    assert prompts[REPEAT_EVERY - 1] == prompts[REPEAT_EVERY - 2]  # the generator repeats on purpose
    assert len(set(dataset.group_keys)) == len(dataset) > len(set(prompts))


def test_image_is_decoded_lazily(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, [_line()])
    dataset = EditDataset(root)
    (root / "a.png").write_bytes(b"not a png any more")  # existence was checked; decoding was not
    item = dataset[0]
    with pytest.raises(OSError):
        _ = item.image


def test_paths_are_normalised_into_the_group_key(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, [_line(image="./img/../a.png"), _line(image="a.png")])
    dataset = EditDataset(root)
    assert dataset.group_keys == [("make it red", "a.png")] * 2


def test_extra_fields_are_kept_and_empty_requirement_is_allowed(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, [_line(requirement="", target_color=[1, 2, 3], task="recolor")])
    item = EditDataset(root)[0]
    assert item.requirement == ""
    assert item.extra == {"target_color": [1, 2, 3], "task": "recolor"}


def test_missing_requirement_counts_as_empty_as_the_original(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _write_dataset(tmp_path, [_line(requirement=None), _line(requirement="keep the rest")])
    with caplog.at_level("WARNING", logger="edit_r1.data.dataset"):
        dataset = EditDataset(root)
    assert [item.requirement for item in dataset] == ["", "keep the rest"]
    assert dataset[0].extra == {}
    assert "1 of 2 lines have no 'requirement' key" in caplog.text


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path, [_line(), "", "   ", "{broken"])
    with pytest.raises(DatasetError, match=r"train_metadata\.jsonl:4: invalid JSON"):
        EditDataset(root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", r":1: expected a JSON object, got list"),
        (_line(requirement=3), r":1: field 'requirement' must be a string, got int 3"),
        (_line(prompt=None), r":1: missing field 'prompt'"),
        (_line(prompt=3), r":1: field 'prompt' must be a string, got int 3"),
        (_line(image=["a.png"]), r":1: field 'image' must be a string, got list"),
        (_line(prompt="  "), r":1: field 'prompt' is empty"),
        (_line(image="missing.png"), r":1: field 'image' names a missing file: .*missing\.png"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    root = _write_dataset(tmp_path, [line])
    with pytest.raises(DatasetError, match=r"train_metadata\.jsonl" + message):
        EditDataset(root)


def test_missing_file_empty_file_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="metadata file not found: .*test_metadata.jsonl"):
        EditDataset(tmp_path, "test")
    (tmp_path / "train_metadata.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="no items"):
        EditDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match="split must be one of"):
        EditDataset(tmp_path, "validation")


# ---------------------------------------------------------------------------- centre crop


def test_center_crop_resize_takes_the_middle_square() -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))  # blue middle third
    cropped = center_crop_resize(image, 10)
    assert cropped.size == (10, 10)
    assert np.all(np.asarray(cropped) == (0, 0, 255))
    resized = center_crop_resize(image.convert("L"), 4)
    assert resized.mode == "RGB" and resized.size == (4, 4)
    with pytest.raises(ValueError, match="positive integer"):
        center_crop_resize(image, 0)


# ---------------------------------------------------------------------------- toy generator


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_toy_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = _tree(write_toy_dataset(tmp_path / "a", 6, 2, size=32, seed=7))
    second = _tree(write_toy_dataset(tmp_path / "b", 6, 2, size=32, seed=7))
    other = _tree(write_toy_dataset(tmp_path / "c", 6, 2, size=32, seed=8))
    assert first == second
    assert first != other
    assert sorted(first) == sorted(
        ["train_metadata.jsonl", "test_metadata.jsonl"]
        + [f"images/train_{i:05d}.png" for i in range(6)]
        + [f"images/test_{i:05d}.png" for i in range(2)]
    )


def test_toy_cli_writes_the_upstream_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(["--out", str(tmp_path / "cli"), "--train", "3", "--test", "1", "--size", "16", "--seed", "1"])
    assert "wrote 3 train and 1 test items" in capsys.readouterr().out
    assert len(EditDataset(tmp_path / "cli", "train")) == 3
    assert EditDataset(tmp_path / "cli", "test")[0].image.size == (16, 16)


def test_toy_covers_every_task_type() -> None:
    examples = generate_examples(60, 32, np.random.default_rng(0))
    assert {task.kind for _, task in examples} == {"recolor", "remove", "background"}
    assert {task.prompt.split()[0] for _, task in examples} == {"make", "remove", "change"}


# ---------------------------------------------------------------------------- toy score


def test_score_is_one_for_a_perfect_edit_and_near_zero_for_the_source(toy_dir: Path) -> None:
    dataset = EditDataset(toy_dir, "train")
    examples = generate_examples(12, 32, np.random.default_rng([3, 0]))  # what write_toy_dataset drew
    for item, (scene, task) in zip(dataset, examples, strict=False):
        assert item.prompt == task.prompt
        perfect = apply_task(scene, task).render()
        assert toy_target_color_score(perfect, item.extra) == pytest.approx(1.0, abs=1e-5)
        assert toy_target_color_score(item.image, item.extra) < 0.1
        # resolution-independent, accepts uint8 and [0, 1] float arrays; blurred edges cost a little
        sharp = np.asarray(perfect.resize((96, 96), Image.Resampling.NEAREST))
        assert toy_target_color_score(sharp / 255.0, item.extra) == pytest.approx(1.0, abs=1e-5)
        blurry = np.asarray(perfect.resize((96, 96), Image.Resampling.BICUBIC))
        assert 0.6 < toy_target_color_score(blurry, item.extra) <= 1.0


def test_score_rises_with_the_share_of_the_target_colour() -> None:
    metadata = {"target_color": list(COLORS["red"]), "target_box": [0.0, 0.0, 1.0, 1.0]}
    canvas = np.zeros((10, 10, 3), dtype=np.uint8)
    scores = []
    for rows in (0, 3, 6, 10):
        canvas[:rows] = COLORS["red"]
        scores.append(toy_target_color_score(canvas, metadata))
    assert scores == pytest.approx([0.0, 0.3, 0.6, 1.0], abs=1e-4)


def test_score_rejects_metadata_without_a_target() -> None:
    with pytest.raises(ValueError, match="needs metadata field 'target_color'"):
        toy_target_color_score(np.zeros((4, 4, 3), dtype=np.uint8), {"target_box": [0, 0, 1, 1]})
