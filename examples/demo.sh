#!/usr/bin/env bash
# `make demo`: the whole Edit-R1 loop on a CPU in a few minutes, with tiny local models.
#
# 1. builds the tiny model kit (.tiny/kit) and the toy edit dataset (.tiny/toy_data);
# 2. starts the reward server with the tiny Qwen2.5-VL judge on 127.0.0.1 (a free port);
# 3. trains the tiny Qwen-Image-Edit with DiffusionNFT under `torchrun --nproc_per_node=2` (gloo);
# 4. stops the server and prints where the checkpoints, metrics, sample grids and reward curve are.
#
# Usage: bash examples/demo.sh [RUN_DIR]   (default: demo_run). Uses .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=${1:-demo_run}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "== building the tiny model kit and the toy dataset"
$PY -m edit_r1.models.tiny build --out .tiny/kit
$PY -m edit_r1.data.toy --out .tiny/toy_data --train 16 --test 4

# A fresh run each time: a new run in the old folder would append to its metrics.jsonl and curve.
rm -rf "$RUN_DIR/tiny_qwen"

PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG="$RUN_DIR/reward_server.log"
mkdir -p "$RUN_DIR"
echo "== starting the reward server (tiny judge) on 127.0.0.1:$PORT, log in $LOG"
$PY reward_server/reward_server.py --backend transformers --model .tiny/kit/judge_qwen2_5_vl \
    --host 127.0.0.1 --port "$PORT" --max-batch-size 16 >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
$PY reward_server/test_reward_server.py --url "http://127.0.0.1:$PORT" --wait 120

echo "== training: torchrun --nproc_per_node=2, config/qwen_image_edit_nft.py:tiny_mllm"
REWARD_SERVER="127.0.0.1:$PORT" $PY -m torch.distributed.run --standalone --nproc_per_node=2 \
    scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:tiny_mllm \
    --config.logdir="$RUN_DIR" --config.run_name=tiny_qwen

RUN="$RUN_DIR/tiny_qwen"
echo
echo "== done. Results in $RUN:"
echo "   checkpoints:   $RUN/checkpoints/ (EMA LoRA in diffusers format under checkpoint-*/lora)"
echo "   metrics:       $RUN/metrics.jsonl"
echo "   sample grids:  $RUN/samples/"
echo "   reward curve:  $RUN/reward_curve.png"
