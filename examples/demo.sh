#!/usr/bin/env bash
# `make demo`: DiffusionNFT visibly improving a trained toy editor on a CPU in a few minutes, the
# colour becoming right while the rest of the scene is kept.
#
# 1. writes the toy world's RL dataset (.tiny/toyworld_data: 32 px scenes, "make the {shape}
#    {colour}" and "change the background to {colour}", each record with the VAE references of
#    the ground truth); the trained toy editor and judge are committed (edit_r1/toyworld/checkpoints);
# 2. starts the reward server with the toy judge on 127.0.0.1 (a free port) and health-checks it;
# 3. trains the toy Qwen-Image-Edit with DiffusionNFT under `torchrun --nproc_per_node=2` (gloo),
#    config/qwen_image_edit_nft.py:toy_keep, 48 epochs rewarded by the judge's logits plus 2.0 x
#    the ground truth's preservation part (the judge alone is won by erasing the scene:
#    docs/toyworld.md, "Reward hacking made visible");
# 4. prints the held-out judge reward and the ground truth (score, success, preservation) before ->
#    after and writes before_after.png.
#
# Usage: bash examples/demo.sh [RUN_DIR]   (default: demo_run). Uses .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN_DIR=${1:-demo_run}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
JUDGE=edit_r1/toyworld/checkpoints/judge_qwen2_5_vl

echo "== writing the toy world's dataset (.tiny/toyworld_data)"
$PY -m edit_r1.toyworld data --out .tiny/toyworld_data

# A fresh run each time: a new run in the old folder would append to its metrics.jsonl and curve.
rm -rf "$RUN_DIR/toy_qwen"

PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG="$RUN_DIR/reward_server.log"
mkdir -p "$RUN_DIR"
echo "== starting the reward server (toy judge) on 127.0.0.1:$PORT, log in $LOG"
$PY reward_server/reward_server.py --backend transformers --model "$JUDGE" --template toy_v1 \
    --host 127.0.0.1 --port "$PORT" --max-batch-size 64 >"$LOG" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true' EXIT
$PY reward_server/test_reward_server.py --url "http://127.0.0.1:$PORT" --wait 120

echo "== training: torchrun --nproc_per_node=2, config/qwen_image_edit_nft.py:toy_keep"
REWARD_SERVER="127.0.0.1:$PORT" $PY -m torch.distributed.run --standalone --nproc_per_node=2 \
    scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:toy_keep \
    --config.logdir="$RUN_DIR" --config.run_name=toy_qwen

RUN="$RUN_DIR/toy_qwen"
echo
$PY -m edit_r1.toyworld report "$RUN"
echo
echo "== done. Results in $RUN:"
echo "   before/after:  $RUN/before_after.png (held-out edits at the first and last evaluation)"
echo "   reward curve:  $RUN/reward_curve.png"
echo "   metrics:       $RUN/metrics.jsonl"
echo "   sample grids:  $RUN/samples/"
echo "   checkpoints:   $RUN/checkpoints/"
