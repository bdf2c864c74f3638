#!/usr/bin/env bash
# ImgEdit (single-turn) sampling, base and LoRA, for one model family (qwen or kontext); then score with the
# official ImgEdit evaluation, or with scripts/evaluation.py and a held-out judge.
#   MODEL=Qwen/Qwen-Image-Edit-2509 IMGEDIT_JSON=/data/ImgEdit/singleturn.json IMGEDIT_ROOT=/data/ImgEdit/singleturn LORA=/runs/qwen/checkpoints/checkpoint-300 \
#   FAMILY=qwen NGPU=8 bash reproduction/run_imgedit.sh
set -euo pipefail
FAMILY=${FAMILY:-qwen}
MODEL=${MODEL:?set MODEL to the base model (hub id or folder)}
IMGEDIT_JSON=${IMGEDIT_JSON:?set IMGEDIT_JSON to singleturn.json}
IMGEDIT_ROOT=${IMGEDIT_ROOT:?set IMGEDIT_ROOT to the folder of its images}
OUT=${OUT:-results}
NGPU=${NGPU:-1}
SCRIPT=reproduction/sampling/sampling_${FAMILY}_imgedit.py

torchrun --nproc_per_node="$NGPU" "$SCRIPT" --pretrained_name_or_path "$MODEL" \
    --input_path "$IMGEDIT_JSON" --root_path "$IMGEDIT_ROOT" --output_dir "$OUT/${FAMILY}_base_imgedit" --seed 42
if [[ -n "${LORA:-}" ]]; then
    torchrun --nproc_per_node="$NGPU" "$SCRIPT" --pretrained_name_or_path "$MODEL" \
        --input_path "$IMGEDIT_JSON" --root_path "$IMGEDIT_ROOT" --output_dir "$OUT/${FAMILY}_lora_imgedit" --seed 42 --lora_path "$LORA"
fi
if [[ -n "${REWARD_SERVER:-}" ]]; then
    for run in base lora; do
        [[ -d "$OUT/${FAMILY}_${run}_imgedit" ]] || continue
        python scripts/evaluation.py --benchmark imgedit --input_path "$IMGEDIT_JSON" --root_path "$IMGEDIT_ROOT" \
            --output_dir "$OUT/${FAMILY}_${run}_imgedit" --reward_server "$REWARD_SERVER"
    done
fi
