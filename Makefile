# Edit-R1 — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run

.PHONY: venv test test-server-min lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first: this pin takes the local CPU wheel here and the CUDA build on GPU machines.
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The judge node's install, checked: a fresh venv with only ".[server]" (no trainer dependencies)
# and the oldest transformers that vLLM's pins allow (vLLM 0.33.0 requires transformers>=5.16.1),
# then the server tests against the tiny judge. The tiny judge is built with the main venv first:
# the server venv has no diffusers, and building checkpoints is the trainer's tooling.
SERVER_VENV ?= .venv-server-min
SERVER_TRANSFORMERS ?= transformers==5.16.1
SERVER_PY := $(SERVER_VENV)/bin/python
SERVER_JUDGE := .tiny/server-min/judge_qwen2_5_vl
TRAINER_ONLY := diffusers peft wandb accelerate datasets ml_collections matplotlib
test-server-min: $(STAMP)
	$(PY) -m edit_r1.models.tiny build --out .tiny/server-min --only judge_qwen2_5_vl
	rm -rf $(SERVER_VENV)
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[server,server-test]" "$(SERVER_TRANSFORMERS)"
	$(SERVER_PY) -c "import importlib.util as u, sys; extra = [m for m in sys.argv[1:] if u.find_spec(m)]; \
		sys.exit(f'the server install pulled trainer packages: {extra}' if extra else 0)" $(TRAINER_ONLY)
	$(SERVER_PY) -m pip list 2>/dev/null | grep -E "^(torch|transformers|tokenizers|Flask|waitress) "
	EDIT_R1_TINY_JUDGE=$(SERVER_JUDGE) $(SERVER_PY) -m pytest tests/server -q -p no:cacheprovider \
		--ignore=tests/server/test_reward_client.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# The import rules of docs/architecture.md (AST checks, seconds).
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py tests/server/test_server_is_self_contained.py

demo: $(STAMP)
	bash examples/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(SERVER_VENV) $(DEMO_DIR) .pytest_cache
