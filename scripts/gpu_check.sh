#!/usr/bin/env bash
# One-shot GPU check (one H100/H200, at most 8 minutes): both families at real size with random
# bf16 weights — train step with gradient checkpointing, without and with compile_transformer, the
# best attention backend available; achieved TFLOP/s, MFU, peak memory; rollout samples/s.
#
#   scripts/gpu_check.sh OUT_DIR        # writes OUT_DIR/gpu_check.json
#
# Without CUDA it prints one line and exits 2. PYTHON selects the interpreter (default: python).
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
# The stages start within a 420 s budget; the hard limit leaves time to write the JSON.
exec timeout --signal=INT 480 "${PYTHON:-python}" scripts/gpu_check.py --out "$1"
