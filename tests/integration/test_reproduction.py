"""Reproduction scripts on tiny fake GEdit-Bench / ImgEdit benchmarks with the tiny model kit.

Covers: output layout for base and base + LoRA (from a training run folder), resume, a broken item
reported with exit status 1, the LoRA converter against the stock pipeline's `load_lora_weights`,
`--layout official` read the way the official GEdit-Bench / ImgEdit evaluators read it, and
`scripts/evaluation.py` against a real reward server on either layout.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from reward_server_fixture import start_reward_server
from safetensors import safe_open

from edit_r1.checkpoint import CheckpointState, save_checkpoint
from edit_r1.inference import SamplingSettings, edit, load_edit_policy
from edit_r1.models import lora as lora_utils
from edit_r1.models.kontext import edit_geometry as kontext_geometry
from edit_r1.models.registry import load_policy

REPO = Path(__file__).resolve().parents[2]
KIT_DIRS = {"qwen": "qwen_image_edit_plus", "kontext": "flux_kontext"}
FAMILIES = {"qwen": "qwen_image_edit", "kontext": "kontext"}
TINY = ["--num_inference_steps", "2", "--max_area", str(64 * 64)]
TINY_QWEN = ["--condition_area", str(64 * 64)]
SETTINGS = SamplingSettings(num_inference_steps=2, max_area=64 * 64, condition_area=64 * 64)


def load_script(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_sampling(family: str, benchmark: str, argv: list[str]) -> int:
    """Runs reproduction/sampling/sampling_<family>_<benchmark>.py in-process (its `main`)."""
    script = load_script(f"reproduction/sampling/sampling_{family}_{benchmark}.py")
    return script.main(family, benchmark, argv + TINY + (TINY_QWEN if family == "qwen" else []))


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gedit/ (save_to_disk, real schema: 2 English items + 1 Chinese) and imgedit.json + images/."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    images = [random_image(rng, 64, 48), random_image(rng, 64, 64), random_image(rng, 48, 64)]
    features = datasets.Features(
        {
            "key": datasets.Value("string"),
            "task_type": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "instruction_language": datasets.Value("string"),
            "input_image": datasets.Image(),
            "input_image_raw": datasets.Image(),
            "Intersection_exist": datasets.Value("bool"),
        }
    )
    data = {
        "key": ["a1", "b2", "c3"],
        "task_type": ["color_alter", "subject-add", "color_alter"],
        "instruction": ["make the car red", "add a cat", "把车变成红色"],
        "instruction_language": ["en", "en", "cn"],
        "input_image": [im.resize((32, 24)) for im in images],  # differs from raw: SRCIMG must be this
        "input_image_raw": images,
        "Intersection_exist": [True, False, True],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(root / "gedit"))
    (root / "images").mkdir()
    random_image(rng, 64, 64).save(root / "images" / "x.png")
    random_image(rng, 64, 48).save(root / "images" / "y.jpg")
    items = {
        "k1": {"id": "images/x.png", "prompt": "turn the sky blue", "edit_type": "replace"},
        "k2": {"id": "images/y.jpg", "prompt": "remove the dog", "edit_type": "remove"},
    }
    (root / "imgedit.json").write_text(json.dumps(items))
    return root


def benchmark_args(benchmark: str, root: Path) -> list[str]:
    if benchmark == "gedit":
        return ["--gedit_bench_path", str(root / "gedit")]
    return ["--input_path", str(root / "imgedit.json"), "--root_path", str(root)]


RESUME_CHECKED = {("qwen", "gedit"), ("kontext", "imgedit")}
EXPECTED = {"gedit": ["color_alter/a1.png", "subject-add/b2.png"], "imgedit": ["k1.jpg", "k2.jpg"]}


def make_run(tiny_kit: Path, family: str, run_dir: Path) -> Path:
    """A training run folder with one checkpoint whose LoRA (rank 4, alpha 8) is random and nonzero."""
    policy = load_policy(
        FAMILIES[family],
        tiny_kit / KIT_DIRS[family],
        device="cpu",
        resolution=64,
        lora=lora_utils.LoraSettings(rank=4, alpha=8.0),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    state = CheckpointState(
        tensors={"default": policy.policy_state_dict()["default"]},
        config={
            "model_family": FAMILIES[family],
            "use_lora": True,
            "train": {"lora_rank": 4, "lora_alpha": 8.0},
        },
    )
    save_checkpoint(run_dir, 3, state, exporters=[lambda d: policy.save_lora(d / "lora")])
    return run_dir


@pytest.fixture(scope="module")
def runs(tiny_kit: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        family: make_run(tiny_kit, family, tmp_path_factory.mktemp(f"run_{family}")) for family in FAMILIES
    }


@pytest.mark.parametrize("benchmark", ["gedit", "imgedit"])
@pytest.mark.parametrize("family", ["qwen", "kontext"])
def test_sampling_writes_benchmark_layout_for_base_and_lora_and_resumes(
    family, benchmark, tiny_kit, benchmarks, runs, tmp_path, capsys
):
    common = [
        "--pretrained_name_or_path",
        str(tiny_kit / KIT_DIRS[family]),
        *benchmark_args(benchmark, benchmarks),
    ]
    base, lora = tmp_path / "base", tmp_path / "lora"
    assert run_sampling(family, benchmark, [*common, "--output_dir", str(base)]) == 0
    assert (
        run_sampling(
            family, benchmark, [*common, "--output_dir", str(lora), "--lora_path", str(runs[family])]
        )
        == 0
    )
    for out in (base, lora):
        written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert written == EXPECTED[benchmark]  # the Chinese GEdit item is not sampled
    for name in EXPECTED[benchmark]:
        base_pixels = np.asarray(Image.open(base / name), dtype=np.float32)
        lora_pixels = np.asarray(Image.open(lora / name), dtype=np.float32)
        assert base_pixels.ndim == 3 and base_pixels.shape == lora_pixels.shape
        assert np.abs(base_pixels - lora_pixels).mean() > 1.0  # the LoRA changes the edit

    if (family, benchmark) not in RESUME_CHECKED:
        return  # the resume logic is shared by all scripts; two of them re-run (keeps the suite fast)
    first = base / EXPECTED[benchmark][0]
    (base / EXPECTED[benchmark][1]).unlink()
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    assert run_sampling(family, benchmark, [*common, "--output_dir", str(base)]) == 0
    assert "1 edited, 1 already done, 0 failed" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    assert (base / EXPECTED[benchmark][1]).is_file()


def test_broken_item_is_reported_not_hidden(tiny_kit, benchmarks, tmp_path, capsys):
    items = json.loads((benchmarks / "imgedit.json").read_text())
    items["broken"] = {"id": "images/missing.png", "prompt": "anything"}
    broken_json = tmp_path / "with_broken.json"
    broken_json.write_text(json.dumps(items))
    out = tmp_path / "out"
    argv = ["--pretrained_name_or_path", str(tiny_kit / KIT_DIRS["kontext"]), "--output_dir", str(out),
            "--input_path", str(broken_json), "--root_path", str(benchmarks)]  # fmt: skip
    assert run_sampling("kontext", "imgedit", argv) == 1
    captured = capsys.readouterr()
    assert "2 edited, 0 already done, 1 failed" in captured.out
    assert "broken: FileNotFoundError" in captured.err
    failures = json.loads((out / "failures_shard0.json").read_text())
    assert [f["key"] for f in failures] == ["broken"]
    assert sorted(p.name for p in out.glob("*.jpg")) == ["k1.jpg", "k2.jpg"]


def test_shards_split_the_items(tiny_kit, benchmarks, tmp_path):
    out = tmp_path / "out"
    common = ["--pretrained_name_or_path", str(tiny_kit / KIT_DIRS["kontext"]), "--output_dir", str(out),
              *benchmark_args("imgedit", benchmarks), "--num_shards", "2"]  # fmt: skip
    assert run_sampling("kontext", "imgedit", [*common, "--shard", "1"]) == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == ["k2.jpg"]
    assert run_sampling("kontext", "imgedit", [*common, "--shard", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == ["k1.jpg", "k2.jpg"]


@pytest.mark.parametrize("family", ["qwen", "kontext"])
def test_converted_lora_reproduces_our_outputs_in_the_stock_pipeline(
    family, tiny_kit, benchmarks, runs, tmp_path, capsys, monkeypatch
):
    converted = tmp_path / "converted"
    checkpoint = runs[family] / "checkpoints" / "checkpoint-3"
    converter = load_script("reproduction/convert_to_diffusers_lora.py")
    assert converter.main([str(checkpoint), "--output_dir", str(converted), "--weights", "default"]) == 0
    assert "rank 4, alpha 8 (scale 2)" in capsys.readouterr().out
    with safe_open(str(converted / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.lora_alpha"] == 8.0

    source = Image.open(benchmarks / "images" / "y.jpg").convert("RGB")
    instruction = "remove the dog"
    policy, lora = load_edit_policy(
        FAMILIES[family], tiny_kit / KIT_DIRS[family], SETTINGS, converted, device="cpu"
    )
    ours = edit(policy, instruction, source, SETTINGS, use_lora=True).permute(1, 2, 0).numpy()

    fresh = type(policy.transformer).from_pretrained(tiny_kit / KIT_DIRS[family], subfolder="transformer")
    stock = policy.stock_pipeline(transformer=fresh)
    stock.load_lora_weights(str(converted))
    generator = torch.Generator().manual_seed(SETTINGS.seed)
    height, width = ours.shape[:2]
    common = dict(prompt=instruction, height=height, width=width, num_inference_steps=2, generator=generator)
    if family == "qwen":
        plus_module = importlib.import_module(type(stock).__module__)
        monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", SETTINGS.condition_area)
        monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", SETTINGS.max_area)
        result = stock(image=source, negative_prompt=" ", true_cfg_scale=4.0, output_type="np", **common)
    else:
        ref_width, ref_height = kontext_geometry(source.size, SETTINGS.max_area, None).reference
        assert (ref_width, ref_height) == (64, 48)  # the preferred 1184x880 scaled to 64^2, floored to 16
        reference = stock.image_processor.resize(source, ref_height, ref_width)
        result = stock(image=reference, guidance_scale=3.5, max_area=height * width, _auto_resize=False,
                       output_type="np", **common)  # fmt: skip
    np.testing.assert_allclose(result.images[0], ours, atol=1e-4)


def test_lora_scale_replaces_the_trained_scale(tiny_kit, runs):
    """``--lora_scale 1`` applies a LoRA as the original scripts did (alpha lost: scale 1)."""
    checkpoint = runs["kontext"] / "checkpoints" / "checkpoint-3"
    for scale in (None, 1.0):
        policy, lora = load_edit_policy(
            "kontext", tiny_kit / KIT_DIRS["kontext"], SETTINGS, checkpoint, lora_scale=scale, device="cpu"
        )
        layers = [m for m in policy.transformer.modules() if hasattr(m, "scaling") and "default" in m.scaling]
        assert layers and {m.scaling["default"] for m in layers} == {lora.scale} == {scale or 2.0}


@pytest.fixture(scope="module")
def reward_server(tiny_kit: Path, tmp_path_factory: pytest.TempPathFactory):
    with start_reward_server(tiny_kit, tmp_path_factory.mktemp("server")) as address:
        yield address


def test_evaluation_scores_an_output_folder(tiny_kit, benchmarks, reward_server, tmp_path):
    out = tmp_path / "samples"
    common = ["--pretrained_name_or_path", str(tiny_kit / KIT_DIRS["kontext"]), "--output_dir", str(out)]
    assert run_sampling("kontext", "gedit", [*common, *benchmark_args("gedit", benchmarks)]) == 0
    (out / "subject-add" / "b2.png").unlink()  # a missing output is counted, not scored as 0
    evaluation = load_script("scripts/evaluation.py")
    result_json, table = tmp_path / "scores.json", tmp_path / "scores.md"
    argv = ["--benchmark", "gedit", "--gedit_bench_path", str(benchmarks / "gedit"), "--output_dir", str(out),
            "--reward_server", reward_server, "--json", str(result_json), "--markdown", str(table)]  # fmt: skip
    assert evaluation.main(argv) == 0
    result = json.loads(result_json.read_text())
    assert result["num_items"] == 2 and result["num_missing"] == 1 and result["num_scored"] == 1
    assert set(result["tasks"]) == {"color_alter", "subject-add"}
    score = result["tasks"]["color_alter"]["mean"]
    assert 0.0 <= score <= 1.0 and result["overall"] == pytest.approx(score)
    assert result["tasks"]["subject-add"]["n"] == 0 and result["tasks"]["subject-add"]["mean"] is None
    markdown = table.read_text()
    assert "| color_alter |" in markdown and "| overall |" in markdown
    assert os.path.getsize(table) > 0


def official_gedit_pairs(save_path: Path, gedit_dir: Path) -> dict[str, tuple[Image.Image, Image.Image]]:
    """What GEdit-Bench's official scorer opens: for every item whose two files exist,
    ``{save_path}/fullset/{task_type}/{language}/{key}_SRCIMG.png`` and ``.../{key}.png``."""
    pairs = {}
    for item in datasets.load_from_disk(str(gedit_dir)):
        folder = save_path / "fullset" / item["task_type"] / item["instruction_language"]
        source, edited = folder / f"{item['key']}_SRCIMG.png", folder / f"{item['key']}.png"
        if source.exists() and edited.exists():
            raw = Image.open(source)
            pairs[item["key"]] = (raw, Image.open(edited).convert("RGB").resize(raw.size))
    return pairs


def test_official_layout_is_what_the_evaluators_read(tiny_kit, benchmarks, reward_server, tmp_path, capsys):
    model = ["--pretrained_name_or_path", str(tiny_kit / KIT_DIRS["kontext"]), "--layout", "official"]
    gedit_out, imgedit_out = tmp_path / "gedit", tmp_path / "imgedit"
    assert run_sampling("kontext", "gedit", [*model, *benchmark_args("gedit", benchmarks),
                                             "--output_dir", str(gedit_out)]) == 0  # fmt: skip
    pairs = official_gedit_pairs(gedit_out, benchmarks / "gedit")
    assert sorted(pairs) == ["a1", "b2"]  # the English items; the Chinese one is not sampled
    expected_source = datasets.load_from_disk(str(benchmarks / "gedit"))[0]["input_image"]
    np.testing.assert_array_equal(np.asarray(pairs["a1"][0]), np.asarray(expected_source))
    written = sorted(str(p.relative_to(gedit_out)) for p in gedit_out.rglob("*.png"))
    assert written == ["fullset/color_alter/en/a1.png", "fullset/color_alter/en/a1_SRCIMG.png",
                       "fullset/subject-add/en/b2.png", "fullset/subject-add/en/b2_SRCIMG.png"]  # fmt: skip

    qwen_2511 = ["--pretrained_name_or_path", str(tiny_kit / "qwen_image_edit_2511"), "--layout", "official"]
    assert run_sampling("qwen", "imgedit", [*qwen_2511, *benchmark_args("imgedit", benchmarks),
                                            "--output_dir", str(imgedit_out)]) == 0  # the 2511 model too  # fmt: skip
    for key in json.loads(
        (benchmarks / "imgedit.json").read_text()
    ):  # ImgEdit: {folder}/{key}.png, PNG bytes
        assert (imgedit_out / f"{key}.png").read_bytes().startswith(b"\x89PNG")

    evaluation = load_script("scripts/evaluation.py")
    capsys.readouterr()
    for benchmark, out in (("gedit", gedit_out), ("imgedit", imgedit_out)):
        result_json = tmp_path / f"{benchmark}.json"
        argv = ["--benchmark", benchmark, *benchmark_args(benchmark, benchmarks), "--output_dir", str(out),
                "--reward_server", reward_server, "--json", str(result_json)]  # fmt: skip
        assert evaluation.main(argv) == 0  # --layout auto finds the official layout
        result = json.loads(result_json.read_text())
        assert result["layout"] == "official" and result["num_scored"] == 2 and result["num_missing"] == 0
        assert evaluation.main([*argv, "--layout", "original"]) == 0
        assert json.loads(result_json.read_text())["num_missing"] == 2


def test_official_layout_resume_restores_a_lost_source_copy(benchmarks, tmp_path):
    from edit_r1.eval_sets import gedit_items
    from edit_r1.reproduction import run

    items = gedit_items(benchmarks / "gedit", layout="official")
    edits = []

    def fake_edit(item):
        edits.append(item.key)
        return item.load_image()

    assert run(items, tmp_path, fake_edit)["done"] == 2 and edits == ["a1", "b2"]
    source_copy, edited = tmp_path / items[0].companions[0][0], tmp_path / items[0].output
    source_copy.unlink()
    stamp = edited.stat().st_mtime_ns
    summary = run(items, tmp_path, fake_edit)
    assert (summary["done"], summary["skipped"], edits) == (1, 1, ["a1", "b2"])  # no new edit
    assert source_copy.is_file() and edited.stat().st_mtime_ns == stamp
