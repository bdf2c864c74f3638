"""DiffusionNFT training of Qwen-Image-Edit-2509 / -2511 with the MLLM judge reward.

    torchrun --nproc_per_node=8 scripts/train_nft_qwen_image_edit.py \\
        --config config/qwen_image_edit_nft.py:qwen_mllm_reward

CPU smoke run on the tiny kit (after ``make demo`` built it):
``python scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:tiny``.
"""

from pathlib import Path

from edit_r1.cli import make_main, run

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = f"{REPO_ROOT}/config/qwen_image_edit_nft.py:qwen_mllm_reward"
main = make_main(DEFAULT_CONFIG, "qwen_image_edit")

if __name__ == "__main__":
    run(main, DEFAULT_CONFIG)
