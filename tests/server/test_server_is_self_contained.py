"""The reward server is its own program: it imports nothing from the training package.

The judge node installs only ``.[server]`` (no diffusers, peft, wandb); the client side may import
``reward_server.protocol``, never the reverse. Checked twice: statically (every import statement
under ``reward_server/``) and dynamically (every server module imports in a fresh interpreter in
which ``edit_r1``, ``diffusers``, ``peft`` and ``wandb`` cannot be imported).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "reward_server"
TRAINING_ONLY = ("edit_r1", "diffusers", "peft", "wandb", "accelerate", "ml_collections", "datasets")


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _uses_sys_path(path: Path) -> bool:
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_no_server_file_imports_the_trainer_or_edits_sys_path() -> None:
    offenders = []
    for path in sorted(SERVER.rglob("*.py")):
        for name in _imported_modules(path):
            if name.split(".")[0] in TRAINING_ONLY or name == "reward_server.test_reward_server":
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
        if _uses_sys_path(path):
            offenders.append(f"{path.relative_to(REPO)} touches sys.path")
    assert offenders == []


_BLOCKED_IMPORT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # "import name" now raises ImportError; find_spec reports it absent
import reward_server.cli, reward_server.health_check, reward_server.worker
import reward_server.backends.transformers_backend, reward_server.backends.openai_backend
import reward_server.backends.vllm_backend, reward_server.qwen_vl_processor
print("sealed")
"""


def test_every_server_module_imports_without_the_training_stack() -> None:
    code = _BLOCKED_IMPORT.format(blocked=set(TRAINING_ONLY))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "sealed" in result.stdout, result.stderr[-2000:]


_NO_FLASK_IN_ENGINE_PROCESSES = """
import sys
import reward_server.cli, reward_server.worker, reward_server.backends.vllm_backend
import reward_server.__main__
print(sorted(name for name in sys.modules if name.split(".")[0] in ("flask", "werkzeug")))
import reward_server.cli as cli
seen = []
def record(args, limits):
    seen.append("flask" in sys.modules)
    raise SystemExit(0)
cli.build_replicas = record
try:
    cli.main(["--backend", "vllm", "--model", "judge"])
except SystemExit:
    pass
print(seen)
"""


def test_the_processes_that_run_a_vllm_engine_have_not_imported_flask() -> None:
    """vLLM's CPU engine starts its engine-core and worker processes by spawning, and each re-imports
    the parent's ``__main__`` module; at model-runner start it scans every loaded module's globals
    with ``hasattr(value, "__dict__")``, which raises on Flask's ``request`` proxy ("Working
    outside of application context") and kills the engine. So the server's entry modules import
    no Flask at module level, and ``main`` builds the engines before it imports the app."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_FLASK_IN_ENGINE_PROCESSES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert (lines[0], lines[-1]) == ("[]", "[False]"), result.stdout
