"""Sample GEdit-Bench (English items; output OUT/{task_type}/{key}.png)
with Qwen-Image-Edit-2509 or -2511 (true CFG 4.0, negative " ", 28 steps), seed 42 per item.

    python reproduction/sampling/sampling_qwen_gedit.py --pretrained_name_or_path MODEL \
        --gedit_bench_path GEDIT_BENCH_DIR --output_dir OUT --seed 42 [--lora_path LORA]
    torchrun --nproc_per_node=8 reproduction/sampling/sampling_qwen_gedit.py ...   # one process per GPU

Add --layout official for the paths the benchmark's own evaluator reads (reproduction/README.md).
Resumable (existing outputs are skipped), sharded, and failures are summarised at the end (exit
status 1). See reproduction/README.md and edit_r1/reproduction.py.
"""

import sys

from edit_r1.reproduction import main

if __name__ == "__main__":
    sys.exit(main("qwen", "gedit"))
