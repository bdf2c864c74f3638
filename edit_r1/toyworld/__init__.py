"""The toy world: a small, trained editing setup in which RL measurably improves a base editor on a CPU.

A VAE and a base editor per family (Qwen-Image-Edit, FLUX.1-Kontext) and a judge (Qwen2.5-VL) trained on the toy
shapes dataset (``edit_r1.data.toy``), saved as real checkpoint folders and loaded with the
standard ``from_pretrained`` calls. ``make demo``, ``scripts/benchmark.py learning`` and a
regression test use the committed weights; ``python -m edit_r1.toyworld build`` regenerates them.
See ``docs/toyworld.md``.
"""

from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"  # the committed build (docs/toyworld.md)
