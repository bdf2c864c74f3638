"""`python -m edit_r1.data check` and `convert` on small fake datasets (files written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from edit_r1.data import EditDataset
from edit_r1.data.__main__ import main
from edit_r1.data.check import check_dataset


def _image(path: Path, size=(600, 520), color=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write(root: Path, split: str, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path = root / f"{split}_metadata.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(prompt="make it red", image="a.png", requirement="only the colour changes", **extra) -> dict:
    return {"prompt": prompt, "image": image, "requirement": requirement, **extra}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "c.png"):
        _image(tmp_path / name)
    _write(tmp_path, "train", [_rec(), _rec(image="b.png")])
    _write(tmp_path, "test", [_rec(image="c.png")])
    return tmp_path


def test_check_clean_dataset_exits_0_with_summary(good: Path, capsys) -> None:
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "| train | 2 | 2 | 2 | 600x520 | 600x520 |" in out and "| test | 1 | 1 | 1 |" in out
    assert "OK: 0 errors, 0 warnings" in out


def test_check_reports_every_error_with_file_and_line(good: Path, capsys) -> None:
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    train = _write(good, "train", [
        _rec(),
        "not json",
        _rec(prompt="   "),
        _rec(image="gone.png"),
        _rec(image="broken.png"),
        {"prompt": "x", "image": "a.png"},
        _rec(prompt="y" * 9000),
    ])  # fmt: skip
    assert main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    for line, text in [(2, "invalid JSON"), (3, "'prompt' is empty"), (4, "missing file"),
                       (5, "does not decode"), (7, "at most 8192")]:  # fmt: skip
        assert (
            f"{train}:{line}: error: " in out
            and text in out.split(f"{train}:{line}: error: ")[1].splitlines()[0]
        )
    assert f"{train}:6: warning: no 'requirement' key" in out
    assert "FAILED: 5 errors" in out


def test_check_warnings_do_not_fail(good: Path) -> None:
    _image(good / "small.png", size=(100, 100))
    _image(good / "wide.png", size=(1600, 600))
    _write(good, "train", [_rec(), _rec(), _rec(image="small.png", requirement=""), _rec(image="wide.png"),
                           _rec(prompt="z" * 2000)])  # fmt: skip
    _write(good, "test", [_rec()])  # same group as a train item
    result = check_dataset(good)
    assert not result.errors
    messages = [str(w) for w in result.warnings]
    assert any("appears 2 times" in m for m in messages)
    assert any("smaller than 512 px" in m and ":3:" in m for m in messages)
    assert any("empty 'requirement'" in m for m in messages)
    assert any("centre crop keeps under half" in m and ":4:" in m for m in messages)
    assert any("may be truncated" in m and ":5:" in m for m in messages)
    assert any("in both train and test" in m for m in messages)
    assert check_dataset(good, min_side=64).warnings != result.warnings  # the size threshold is a flag


def test_check_missing_split_and_folder(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 1
    _image(tmp_path / "a.png")
    _write(tmp_path, "train", [_rec()])
    assert main(["check", str(tmp_path)]) == 1
    assert "test_metadata.jsonl: error: metadata file not found" in capsys.readouterr().out


def _assert_split_by_image(out: Path, total: int) -> tuple[EditDataset, EditDataset]:
    train, test = EditDataset(out, "train"), EditDataset(out, "test")
    assert len(train) + len(test) == total and len(test) >= 1
    assert not {it.image_relpath for it in train} & {it.image_relpath for it in test}
    return train, test


def test_convert_imgedit_copies_splits_and_checks(tmp_path: Path, capsys) -> None:
    root = tmp_path / "imgedit"
    data = {}
    for i in range(10):
        _image(root / "sub" / f"{i}.jpg", color=(i * 20, 0, 0))
        data[f"k{i}"] = {"id": f"sub/{i}.jpg", "prompt": f"edit number {i}", "edit_type": "adjust"}
    data["k10"] = {"id": "sub/0.jpg", "prompt": "another edit of image 0", "edit_type": "remove"}
    (tmp_path / "edit.json").write_text(json.dumps(data))
    argv = ["convert", "--from", "imgedit", "--input_path", str(tmp_path / "edit.json"), "--root_path",
            str(root), "--out", str(tmp_path / "out"), "--test_fraction", "0.2", "--seed", "3"]  # fmt: skip
    assert main(argv) == 0
    assert "OK: 0 errors" in capsys.readouterr().out
    train, test = _assert_split_by_image(tmp_path / "out", 11)
    assert len({it.image_relpath for it in test}) == 2  # 0.2 x 10 source images
    item = next(it for it in [*train, *test] if it.extra["source_key"] == "k10")
    assert item.extra["edit_type"] == "remove" and item.requirement == ""
    assert not item.image_path.is_symlink() and item.image.getpixel((0, 0)) == (0, 0, 0)
    assert main(argv) == 1  # output exists: refused without --overwrite
    first = (tmp_path / "out" / "test_metadata.jsonl").read_text()
    assert main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "out" / "test_metadata.jsonl").read_text() == first  # same seed, same split
    assert main([*argv[:-1], "4", "--overwrite"]) == 0
    assert (tmp_path / "out" / "test_metadata.jsonl").read_text() != first


def test_convert_folder_csv_with_symlinks_and_invalid_rows(tmp_path: Path, capsys) -> None:
    for i in range(4):
        _image(tmp_path / "imgs" / f"{i}.png")
    rows = ["image,instruction,requirement,style"] + [
        f"{i}.png,edit {i},keep the rest,x{i}" for i in range(4)
    ]
    rows += ["missing.png,edit 9,,y", "1.png,,,z"]
    (tmp_path / "edits.csv").write_text("\n".join(rows) + "\n")
    argv = ["convert", "--from", "folder", "--images", str(tmp_path / "imgs"), "--instructions",
            str(tmp_path / "edits.csv"), "--out", str(tmp_path / "out"), "--mode", "symlink"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'edits.csv'}:6: missing image" in err and f"{tmp_path / 'edits.csv'}:7: empty" in err
    assert not (tmp_path / "out").exists()  # nothing written
    assert main([*argv, "--skip_invalid", "--num_test", "1"]) == 0
    train, test = _assert_split_by_image(tmp_path / "out", 4)
    assert len(test) == 1 and train[0].image_path.is_symlink()
    assert {it.extra["style"] for it in [*train, *test]} == {"x0", "x1", "x2", "x3"}
    assert train[0].requirement == "keep the rest"


def test_convert_jsonl_field_mapping_and_bad_split(tmp_path: Path, capsys) -> None:
    for i in range(3):
        _image(tmp_path / "src" / f"{i}.png")
    lines = [json.dumps({"src": f"src/{i}.png", "text": f"edit {i}", "req": "r"}) for i in range(3)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    base = ["convert", "--from", "jsonl", "--input_path", str(tmp_path / "in.jsonl"), "--out",
            str(tmp_path / "out"), "--prompt_field", "text", "--image_field", "src"]  # fmt: skip
    assert main([*base, "--requirement_field", "req", "--mode", "hardlink"]) == 0
    train, _ = _assert_split_by_image(tmp_path / "out", 3)
    assert train[0].requirement == "r" and train[0].prompt.startswith("edit ")
    assert main([*base, "--num_test", "3", "--overwrite"]) == 1
    assert "both splits need at least one" in capsys.readouterr().err
    assert main(["convert", "--from", "jsonl", "--out", str(tmp_path / "o2")]) == 1
    assert "needs --input_path" in capsys.readouterr().err
    assert main([*base[:-4], "--overwrite"]) == 1  # default field names absent
    assert f"{tmp_path / 'in.jsonl'}:1: needs the fields 'image' and 'prompt'" in capsys.readouterr().err


def test_several_source_images_in_the_loader_and_check(good: Path, capsys) -> None:
    from edit_r1.data import DatasetError, check_source_counts

    _write(good, "train", [_rec(image="a.png", images=["a.png", "b.png"]), {"prompt": "p", "images": ["b.png", "c.png"], "requirement": ""}])  # fmt: skip
    _write(good, "test", [_rec(image="c.png", images=["c.png", "./x/../a.png"])])
    train, test = EditDataset(good, "train"), EditDataset(good, "test")
    assert train[0].group_key == ("make it red", "a.png", "b.png") and train[1].image_relpath == "b.png"
    assert [im.size for im in test[0].images] == [(600, 520)] * 2 and test[0].image_relpaths[1] == "a.png"
    assert check_source_counts([train, test], 3, "Model") == 2
    with pytest.raises(DatasetError, match=r"train_metadata.jsonl:1: 2 source images, but M takes one"):
        check_source_counts([train], 1, "M")
    assert main(["check", str(good)]) == 0
    assert "| train | 2 | 2 | 3 |" in capsys.readouterr().out  # groups keyed on both images

    _write(good, "test", [_rec(image="c.png", images=["c.png", "gone.png"]), _rec(image="a.png", images=["b.png"]),
                          _rec(images="c.png")])  # fmt: skip
    assert main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    assert "test_metadata.jsonl:1: error: field 'images[1]' names a missing file" in out
    assert "test_metadata.jsonl:2: error: field 'image' ('a.png') must equal images[0]" in out
    assert "test_metadata.jsonl:3: error: field 'images' must be a non-empty list" in out
    _write(good, "test", [_rec(image="c.png", images=["c.png", "a.png"]), _rec(image="c.png")])
    with pytest.raises(DatasetError, match=r"test_metadata.jsonl:2: 1 source images, but .*:1 has 2"):
        check_source_counts([EditDataset(good, "test")], 3, "M")


def test_convert_jsonl_with_image_lists(tmp_path: Path) -> None:
    for i in range(4):
        _image(tmp_path / f"{i}.png")
    lines = [
        json.dumps({"image": [f"{i}.png", f"{(i + 1) % 4}.png"], "prompt": f"combine {i}"}) for i in range(4)
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert (
        main(["convert", "--from", "jsonl", "--input_path", str(tmp_path / "in.jsonl"), "--out", str(out)])
        == 0
    )
    items = [*EditDataset(out, "train"), *EditDataset(out, "test")]
    assert all(item.num_images == 2 for item in items) and len(items) == 4
