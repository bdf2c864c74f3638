"""scripts/gpu_check.sh: one line and status 2 without CUDA; its stages' code path on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit on a machine without CUDA")
def test_without_cuda_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was measured"
    ]
    assert not (tmp_path / "out").exists()


def test_rollout_stage_writes_the_json_on_a_cpu(tiny_kit, tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path), "--device", "cpu",
               "--size", "small", "--repeats", "1", "--stages", "rollout", "--families", "qwen_image_edit",
               "--rollout-batch", "1", "--kit", str(tiny_kit)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rollout = report["families"]["qwen_image_edit"]["rollout"]
    assert "error" not in rollout, rollout
    assert rollout["samples_per_s"] > 0 and rollout["num_steps"] == 6 and rollout["batch"] == 1
    assert report["families"]["qwen_image_edit"]["attention_backend"] == "default"
    assert report["fsdp_dcp"]["max_abs_difference"] == 0.0


def _load_script(name: str):
    """A module of scripts/ (not a package) imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fsdp_dcp_stage_and_a_stage_this_torch_cannot_run(tiny_kit, tmp_path, monkeypatch):
    """A stage needing a feature this torch lacks is skipped naming it; the others still run (here
    the FSDP2 + DCP round trip, whose reloaded copy equals the trained one)."""
    gpu_check = _load_script("gpu_check")
    monkeypatch.setitem(gpu_check.TORCH_FEATURES, "no_such_feature", ("torch.utils", ("no_such_function",)))
    monkeypatch.setitem(gpu_check.STAGE_NEEDS, "rollout", ("no_such_feature",))
    status = gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--size", "small", "--stages", "rollout",
                             "--families", "qwen_image_edit", "--kit", str(tiny_kit)])  # fmt: skip
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    lacks = f"torch {torch.__version__} lacks torch.utils.no_such_function"
    assert status == 0
    assert report["torch_features"]["no_such_feature"] == lacks
    assert report["torch_features"]["fsdp2"] == report["torch_features"]["dcp"] == "ok"
    assert report["families"]["qwen_image_edit"]["rollout"] == {"skipped": lacks}
    assert report["fsdp_dcp"]["max_abs_difference"] == 0.0 and report["fsdp_dcp"]["backend"] == "gloo"


def _bare_venv(root: Path) -> Path:
    """A venv of this interpreter's base Python without pip and without any package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    return root / "bin" / "python"


def test_an_interpreter_without_the_packages_is_one_line_and_status_2(tmp_path):
    """What the issue met (`python` without torch: a traceback, status 1): now one line naming the
    packages, status 2, with or without wheels to install (a wheel-less python cannot pip)."""
    env = dict(os.environ, PYTHON=str(_bare_venv(tmp_path / "bare")), GPU_WHEELS=str(tmp_path / "none"))
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: missing Python package(s) torch, numpy,"), (
        lines
    )
    assert "diffusers, ml-collections" in lines[0] and "make gpu-wheels" in lines[0]


def _write_wheel(folder: Path, name: str, body: str) -> Path:
    """A minimal pure-Python wheel holding module ``name``."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", body)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_a_missing_package_is_installed_from_its_wheel_into_the_site_folder(tmp_path, monkeypatch, capsys):
    """Only what is missing is installed, with this interpreter's pip, into the site folder; a
    package without a wheel is named in one line (status 2)."""
    env_check = _load_script("gpu_check_env")
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _write_wheel(wheels, "gpu_probe_pkg", "VALUE = 41\n")
    _write_wheel(wheels, "numpy", "raise ImportError('must not be installed: numpy is here')\n")
    monkeypatch.setattr(env_check, "REQUIRED", (("numpy", "numpy"), ("gpu_probe_pkg", "gpu-probe-pkg")))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert env_check.main(["--wheels", str(wheels), "--site", str(site)]) == 0
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith("dist-info")) == ["gpu_probe_pkg"]
    assert "installed gpu_probe_pkg-1.0-py3-none-any.whl" in capsys.readouterr().out
    monkeypatch.setattr(env_check, "REQUIRED", (("gpu_probe_absent", "gpu-probe-absent"),))
    assert env_check.main(["--wheels", str(wheels), "--site", str(tmp_path / "site2")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("gpu_check: missing Python package(s) gpu-probe-absent")


def test_the_wheels_are_exactly_what_the_lent_machine_lacks():
    """scripts/gpu_wheels.txt pins every distribution the check needs that the lent machine's
    package list does not name, and nothing else."""
    env_check = _load_script("gpu_check_env")
    on_machine = env_check.listed_names(REPO / "scripts" / "gpu_machine_packages.txt")
    wheels = env_check.listed_names(REPO / "scripts" / "gpu_wheels.txt")
    needed = {env_check.normalise(dist) for _module, dist in env_check.REQUIRED}
    assert wheels == needed - on_machine == {"diffusers", "ml-collections"}
    assert "torch" in on_machine and "transformers" in on_machine
