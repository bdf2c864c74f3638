#!/usr/bin/env bash
# GEdit-Bench sampling, base and LoRA, for one model family (qwen or kontext); then score with the
# official GEdit-Bench (VIEScore) evaluation, or with scripts/evaluation.py and a held-out judge.
#   MODEL=Qwen/Qwen-Image-Edit-2509 GEDIT=/data/GEdit-Bench LORA=/runs/qwen/checkpoints/checkpoint-300 \
#   FAMILY=qwen NGPU=8 bash reproduction/run_gedit.sh
set -euo pipefail
FAMILY=${FAMILY:-qwen}
MODEL=${MODEL:?set MODEL to the base model (hub id or folder)}
GEDIT=${GEDIT:?set GEDIT to the GEdit-Bench save_to_disk folder}
OUT=${OUT:-results}
NGPU=${NGPU:-1}
SCRIPT=reproduction/sampling/sampling_${FAMILY}_gedit.py

torchrun --nproc_per_node="$NGPU" "$SCRIPT" --pretrained_name_or_path "$MODEL" \
    --gedit_bench_path "$GEDIT" --output_dir "$OUT/${FAMILY}_base_gedit" --seed 42
if [[ -n "${LORA:-}" ]]; then
    torchrun --nproc_per_node="$NGPU" "$SCRIPT" --pretrained_name_or_path "$MODEL" \
        --gedit_bench_path "$GEDIT" --output_dir "$OUT/${FAMILY}_lora_gedit" --seed 42 --lora_path "$LORA"
fi
if [[ -n "${REWARD_SERVER:-}" ]]; then
    for run in base lora; do
        [[ -d "$OUT/${FAMILY}_${run}_gedit" ]] || continue
        python scripts/evaluation.py --benchmark gedit --gedit_bench_path "$GEDIT" \
            --output_dir "$OUT/${FAMILY}_${run}_gedit" --reward_server "$REWARD_SERVER"
    done
fi
