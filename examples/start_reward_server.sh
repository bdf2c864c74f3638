#!/usr/bin/env bash
# Start the Edit-R1 reward server (the MLLM judge) on this node.
#
#   JUDGE_MODEL   judge checkpoint (default Qwen/Qwen2.5-VL-32B-Instruct; a local folder works)
#   BACKEND       vllm (default) | transformers | openai
#   HOST, PORT    interface and port (default 0.0.0.0:12341: the trainers are on other nodes)
#   TP, DP        tensor-parallel size per replica and number of replicas (default 2 x 4 = 8 GPUs)
#   MAX_BATCH     items per engine call (default 64)
#   REWARD_SERVER_API_KEY   bearer key the trainers must send (strongly recommended off loopback)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python reward_server/reward_server.py \
    --backend "${BACKEND:-vllm}" \
    --model "${JUDGE_MODEL:-Qwen/Qwen2.5-VL-32B-Instruct}" \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-12341}" \
    --tensor-parallel-size "${TP:-2}" --data-parallel-size "${DP:-4}" \
    --max-batch-size "${MAX_BATCH:-64}" "$@"
