"""DiffusionNFT training of Qwen-Image-Edit-2509 / -2511 with the MLLM judge reward.

    torchrun --nproc_per_node=8 scripts/train_nft_qwen_image_edit.py \\
        --config config/qwen_image_edit_nft.py:qwen_mllm_reward

CPU smoke run on the tiny kit (after ``make demo`` built it):
``python scripts/train_nft_qwen_image_edit.py --config config/qwen_image_edit_nft.py:tiny``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from absl import app  # noqa: E402

from edit_r1.cli import make_main  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
main = make_main(f"{REPO_ROOT}/config/qwen_image_edit_nft.py:qwen_mllm_reward", "qwen_image_edit")

if __name__ == "__main__":
    app.run(main)
