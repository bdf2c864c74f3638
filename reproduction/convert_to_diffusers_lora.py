"""Convert a trained LoRA to the diffusers LoRA format, alpha preserved.

    python reproduction/convert_to_diffusers_lora.py SOURCE --output_dir OUT [--weights ema|default]

SOURCE is a training checkpoint (``RUN/checkpoints/checkpoint-<epoch>``), a run folder (its
latest checkpoint), an original-release LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``) or a diffusers LoRA file/folder. OUT receives
``pytorch_lora_weights.safetensors`` with keys ``transformer.<module>.lora_{A,B}.weight`` and the
LoRA config (rank, alpha, target modules) in its metadata, so

    pipe.load_lora_weights(OUT)

applies the update at its trained scale alpha / r. The original release's converter only renamed
the keys and lost alpha, so its LoRA loaded at scale 1 instead of 2 (docs/upstream-differences.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edit_r1.lora_files import read_lora, write_diffusers_lora


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint, run folder, original-release LoRA folder or LoRA file")
    parser.add_argument("--output_dir", required=True, help="folder for pytorch_lora_weights.safetensors")
    parser.add_argument(
        "--weights",
        choices=("ema", "default"),
        default="ema",
        help="for a training checkpoint: the EMA LoRA (evaluated and exported by the trainer) or the raw adapter",
    )
    args = parser.parse_args(argv)
    lora = read_lora(args.source, weights=args.weights)
    target = write_diffusers_lora(lora, args.output_dir)
    print(f"read   {lora.source}")
    print(
        f"wrote  {target}: {len(lora.tensors)} tensors on {len(lora.target_modules)} modules, "
        f"rank {lora.rank}, alpha {lora.alpha:g} (scale {lora.scale:g})"
    )
    print(f"load   pipe.load_lora_weights({str(target.parent)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
