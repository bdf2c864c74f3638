#!/usr/bin/env bash
# One-shot GPU check (one H100/H200, at most 8 minutes): both families at real size with random
# bf16 weights — train step with gradient checkpointing, without and with compile_transformer, the
# best attention backend available; achieved TFLOP/s, MFU, peak memory; rollout samples/s.
#
#   scripts/gpu_check.sh OUT_DIR [gpu_check.py options]   # writes OUT_DIR/gpu_check.json
#
# The interpreter: $PYTHON, else .venv/bin/python when it exists, else python3. A package the check
# needs and the interpreter lacks is installed from the carried wheels (.gpu-wheels/, `make
# gpu-wheels`; $GPU_WHEELS names another folder) into a temporary site directory, removed at the
# end. Without CUDA, or with a package missing and no wheel for it, it prints one line and exits 2.
# GPU_CHECK_TIMEOUT_S (default 480) is the hard limit; the stages start within --budget-s (420).
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR [gpu_check.py options]" >&2
    exit 2
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x .venv/bin/python ]; then
    python=.venv/bin/python
else
    python=python3
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_check: no Python interpreter '$python' (set PYTHON to one)" >&2
    exit 2
fi
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
"$python" scripts/gpu_check_env.py --wheels "${GPU_WHEELS:-.gpu-wheels}" --site "$site"
# The site directory first (it holds only what the interpreter lacked), then this checkout: the
# project is imported from here, not installed (and the tiny-kit build subprocess sees both).
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout --signal=INT "${GPU_CHECK_TIMEOUT_S:-480}" "$python" scripts/gpu_check.py --out "$out" "$@"
