#!/usr/bin/env bash
# DiffusionNFT on Qwen-Image-Edit-2509 with the MLLM judge (config qwen_mllm_reward).
#
#   REWARD_SERVER   host:port of the judge (comma-separated list for several servers) — required
#   DATASET         dataset folder with {train,test}_metadata.jsonl — required
#   NPROC           GPUs on this node (default 8); NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
#                   for multi-node runs (torchrun's usual rendezvous)
#   extra arguments are passed on, e.g. --config.train.learning_rate=1e-4 --config.resume_from=logs/RUN
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REWARD_SERVER:?set REWARD_SERVER=host:port of the reward server}"
: "${DATASET:?set DATASET=/path/to/dataset}"
exec torchrun --nproc_per_node="${NPROC:-8}" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    scripts/train_nft_qwen_image_edit.py \
    --config config/qwen_image_edit_nft.py:qwen_mllm_reward --config.dataset="$DATASET" "$@"
