#!/usr/bin/env bash
# `make demo`: DiffusionNFT improving a real (toy) editor on a CPU in a few minutes.
#
# The toy world (docs/toyworld.md) is committed under edit_r1/toyworld/checkpoints: a trained
# Qwen-Image-Edit-architecture editor that is only partly competent at 32 px colour edits, and a
# trained Qwen2.5-VL judge whose expected digit score tracks the toy rule score.
# 1. writes the toy-world dataset (.tiny/toyworld_data);
# 2. starts the reward server with the toy judge on 127.0.0.1 (a free port);
# 3. trains the toy editor with DiffusionNFT under `torchrun --nproc_per_node=2` (gloo) against it;
# 4. stops the server and prints the held-out judge reward and rule score before and after.
#
# Usage: bash examples/demo.sh [RUN_DIR]   (default: demo_run). Uses .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=${1:-demo_run}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
JUDGE=edit_r1/toyworld/checkpoints/judge_qwen2_5_vl

echo "== writing the toy-world dataset"
$PY -m edit_r1.data.toy --out .tiny/toyworld_data --train 256 --test 32 --size 32 --tasks recolor,background

PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG="$RUN_DIR/reward_server.log"
mkdir -p "$RUN_DIR"
echo "== starting the reward server (toy judge) on 127.0.0.1:$PORT, log in $LOG"
$PY reward_server/reward_server.py --backend transformers --model "$JUDGE" \
    --host 127.0.0.1 --port "$PORT" --max-batch-size 64 >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
$PY reward_server/test_reward_server.py --url "http://127.0.0.1:$PORT" --wait 120

echo "== training: torchrun --nproc_per_node=2, config/qwen_image_edit_nft.py:toy"
REWARD_SERVER="127.0.0.1:$PORT" $PY -m torch.distributed.run --standalone --nproc_per_node=2 \
    scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:toy \
    --config.logdir="$RUN_DIR" --config.run_name=toy_qwen

RUN="$RUN_DIR/toy_qwen"
echo
$PY -m edit_r1.toyworld report "$RUN"
echo "   checkpoints:   $RUN/checkpoints/ (EMA LoRA in diffusers format under checkpoint-*/lora)"
echo "   metrics:       $RUN/metrics.jsonl"
echo "   reward curve:  $RUN/reward_curve.png"
