#!/usr/bin/env bash
# DiffusionNFT on FLUX.1-Kontext-dev with the MLLM judge.
#
#   REWARD_SERVER   host:port of the judge (comma-separated list for several servers) — required
#   DATASET         dataset folder with {train,test}_metadata.jsonl — required
#   CONFIG_NAME     kontext_mllm_reward (default) | kontext_mllm_reward_ban_prompt
#   NPROC, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as for train_qwen_image_edit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REWARD_SERVER:?set REWARD_SERVER=host:port of the reward server}"
: "${DATASET:?set DATASET=/path/to/dataset}"
exec torchrun --nproc_per_node="${NPROC:-8}" --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    scripts/train_nft_kontext.py \
    --config "config/kontext_nft.py:${CONFIG_NAME:-kontext_mllm_reward}" --config.dataset="$DATASET" "$@"
