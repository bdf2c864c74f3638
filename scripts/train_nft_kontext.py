"""DiffusionNFT training of FLUX.1-Kontext-dev with the MLLM judge reward.

    torchrun --nproc_per_node=8 scripts/train_nft_kontext.py \\
        --config config/kontext_nft.py:kontext_mllm_reward

(or ``:kontext_mllm_reward_ban_prompt`` for low-variance group filtering). CPU smoke run:
``python scripts/train_nft_kontext.py --config config/kontext_nft.py:tiny``.
"""

from pathlib import Path

from absl import app

from edit_r1.cli import make_main

REPO_ROOT = Path(__file__).resolve().parents[1]
main = make_main(f"{REPO_ROOT}/config/kontext_nft.py:kontext_mllm_reward", "kontext")

if __name__ == "__main__":
    app.run(main)
