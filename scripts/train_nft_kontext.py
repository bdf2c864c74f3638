"""DiffusionNFT training of FLUX.1-Kontext-dev with the MLLM judge reward.

    torchrun --nproc_per_node=8 scripts/train_nft_kontext.py \\
        --config config/kontext_nft.py:kontext_mllm_reward

(or ``:kontext_mllm_reward_ban_prompt`` for low-variance group filtering). CPU smoke run:
``python scripts/train_nft_kontext.py --config config/kontext_nft.py:tiny``.
"""

from pathlib import Path

from edit_r1.cli import make_main, run

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = f"{REPO_ROOT}/config/kontext_nft.py:kontext_mllm_reward"
main = make_main(DEFAULT_CONFIG, "kontext")

if __name__ == "__main__":
    run(main, DEFAULT_CONFIG)
