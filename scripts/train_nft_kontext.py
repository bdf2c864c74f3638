"""DiffusionNFT training of FLUX.1-Kontext-dev with the MLLM judge reward.

    torchrun --nproc_per_node=8 scripts/train_nft_kontext.py \\
        --config config/kontext_nft.py:kontext_mllm_reward

(or ``:kontext_mllm_reward_ban_prompt`` for low-variance group filtering). CPU smoke run:
``python scripts/train_nft_kontext.py --config config/kontext_nft.py:tiny``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from absl import app  # noqa: E402

from edit_r1.cli import make_main  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
main = make_main(f"{REPO_ROOT}/config/kontext_nft.py:kontext_mllm_reward", "kontext")

if __name__ == "__main__":
    app.run(main)
