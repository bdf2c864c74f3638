"""Reading and writing trained LoRAs in the formats users hand to the reproduction scripts.

`read_lora(path)` accepts:

* a diffusers LoRA file (``*.safetensors``, keys ``transformer.<module>.lora_{A,B}.weight``) or a
  folder holding ``pytorch_lora_weights.safetensors``; alpha is read from the file metadata
  (``lora_adapter_metadata``, written by ``save_lora_weights``);
* an original-release (peft) folder: ``adapter_config.json`` (``r``, ``lora_alpha``) with
  ``adapter_model.safetensors`` (keys ``base_model.model.<module>...``) or the key-renamed
  ``adapter_model_converted.safetensors``;
* a training checkpoint ``checkpoint-<epoch>/``: ``weights="ema"`` (default) takes the exported
  EMA LoRA ``lora/pytorch_lora_weights.safetensors``, ``weights="default"`` the trained adapter
  (the ``default`` tensors of ``sharded/``, or ``tensors/default.safetensors``) with rank and alpha
  from ``config.json``;
* a run folder: its latest complete checkpoint.

A file without alpha is read with alpha = rank (scale 1), which is what ``load_lora_weights``
does with it; a warning says so. `write_diffusers_lora` writes the diffusers format with alpha
in the metadata, so the stock pipelines apply the update at its trained scale alpha / r.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edit_r1.checkpoint import SHARDED_DIRNAME, latest_checkpoint, read_sharded_tensors

logger = logging.getLogger(__name__)

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model_converted.safetensors")
KEY_PREFIXES = ("transformer.", "base_model.model.")
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")


@dataclass
class LoraWeights:
    """LoRA matrices keyed by ``<module>.lora_{A,B}.weight`` (module path inside the transformer)."""

    tensors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    source: str

    @property
    def scale(self) -> float:
        """The factor the update B A is applied with: alpha / rank."""
        return self.alpha / self.rank

    @property
    def target_modules(self) -> tuple[str, ...]:
        """Full module paths that carry a LoRA, sorted."""
        return tuple(sorted({LORA_KEY.match(k).group("module") for k in self.tensors}))


def _strip_prefix(key: str, source: Path) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if LORA_KEY.match(key) is None:
        raise ValueError(f"{source}: key {key!r} is not a LoRA matrix '<module>.lora_A/B.weight'")
    return key


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {_strip_prefix(k, path): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        metadata = f.metadata() or {}
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    return tensors, metadata


def _uniform_rank(tensors: dict[str, torch.Tensor], source: Path) -> int:
    ranks = {t.shape[0] for k, t in tensors.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(
            f"{source}: LoRA ranks differ across modules ({sorted(ranks)}); only one rank is supported"
        )
    for key in tensors:
        pair = (
            key.replace(".lora_A.", ".lora_B.") if ".lora_A." in key else key.replace(".lora_B.", ".lora_A.")
        )
        if pair not in tensors:
            raise ValueError(f"{source}: {key} has no matching {pair}")
    return ranks.pop()


def _alpha_from_metadata(metadata: dict[str, str], source: Path) -> float | None:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    config = json.loads(raw)
    for pattern in ("transformer.alpha_pattern", "transformer.rank_pattern"):
        if config.get(pattern):
            raise ValueError(f"{source}: per-module {pattern.split('.')[1]} is not supported")
    alpha = config.get("transformer.lora_alpha")
    return None if alpha is None else float(alpha)


def _from_file(path: Path, alpha: float | None = None) -> LoraWeights:
    tensors, metadata = _load_tensors(path)
    rank = _uniform_rank(tensors, path)
    if alpha is None:
        alpha = _alpha_from_metadata(metadata, path)
    if alpha is None:
        logger.warning("%s carries no LoRA alpha; using alpha = rank = %d (scale 1)", path, rank)
        alpha = float(rank)
    return LoraWeights(tensors=tensors, rank=rank, alpha=float(alpha), source=str(path))


def _from_peft_folder(folder: Path) -> LoraWeights:
    config = json.loads((folder / PEFT_CONFIG_NAME).read_text(encoding="utf-8"))
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise ValueError(f"{folder / PEFT_CONFIG_NAME}: per-module alpha/rank patterns are not supported")
    for name in PEFT_WEIGHT_NAMES:
        if (folder / name).is_file():
            weights = _from_file(folder / name, alpha=float(config["lora_alpha"]))
            if weights.rank != int(config["r"]):
                raise ValueError(
                    f"{folder}: adapter_config r={config['r']} but the weights have rank {weights.rank}"
                )
            return weights
    raise FileNotFoundError(f"{folder} has {PEFT_CONFIG_NAME} but none of {PEFT_WEIGHT_NAMES}")


def _from_checkpoint(ckpt: Path, weights: str) -> LoraWeights:
    if weights == "ema":
        exported = ckpt / "lora" / DIFFUSERS_WEIGHT_NAME
        if not exported.is_file():
            if (ckpt / "transformer").is_dir():
                raise ValueError(f"{ckpt} is a full-weight checkpoint (transformer/), not a LoRA")
            raise FileNotFoundError(f"{ckpt} has no exported LoRA {exported.relative_to(ckpt)}")
        return _from_file(exported)
    if weights != "default":
        raise ValueError(f"weights must be 'ema' or 'default', got {weights!r}")
    config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    train = config.get("train", {})
    if not config.get("use_lora", True) or "lora_alpha" not in train:
        raise ValueError(f"{ckpt}/config.json does not describe a LoRA run (train.lora_alpha missing)")
    if (ckpt / SHARDED_DIRNAME).is_dir():  # the trainer's sharded state (any number of ranks)
        path = ckpt / SHARDED_DIRNAME
        tensors = {_strip_prefix(k, path): t for k, t in read_sharded_tensors(ckpt, "default").items()}
        lora = LoraWeights(
            tensors=tensors,
            rank=_uniform_rank(tensors, path),
            alpha=float(train["lora_alpha"]),
            source=str(path),
        )
    else:
        path = ckpt / "tensors" / "default.safetensors"
        lora = _from_file(path, alpha=float(train["lora_alpha"]))
    if lora.rank != int(train["lora_rank"]):
        raise ValueError(f"{path}: rank {lora.rank} differs from config train.lora_rank={train['lora_rank']}")
    return lora


def read_lora(path: str | os.PathLike, weights: str = "ema") -> LoraWeights:
    """Reads a LoRA from any of the layouts in the module docstring."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LoRA path {path} does not exist")
    if path.is_file():
        return _from_file(path)
    if (path / DIFFUSERS_WEIGHT_NAME).is_file():
        return _from_file(path / DIFFUSERS_WEIGHT_NAME)
    if (path / PEFT_CONFIG_NAME).is_file():
        return _from_peft_folder(path)
    if CHECKPOINT_NAME.match(path.name):
        return _from_checkpoint(latest_checkpoint(path), weights)
    checkpoint = latest_checkpoint(path)  # a run folder
    if checkpoint is None:
        raise FileNotFoundError(
            f"{path}: no {DIFFUSERS_WEIGHT_NAME}, no {PEFT_CONFIG_NAME} and no complete checkpoint inside"
        )
    return _from_checkpoint(checkpoint, weights)


def lora_metadata(rank: int, alpha: float, target_modules: tuple[str, ...]) -> dict[str, str]:
    """Safetensors metadata in the layout diffusers' ``save_lora_weights`` writes (LoraConfig of
    the transformer under ``transformer.``-prefixed keys), so ``load_lora_weights`` restores alpha."""
    config = {
        "transformer.r": rank,
        "transformer.lora_alpha": alpha,
        "transformer.target_modules": list(target_modules),
        "transformer.init_lora_weights": True,
        "transformer.lora_dropout": 0.0,
        "transformer.bias": "none",
        "transformer.use_dora": False,
    }
    return {"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def write_diffusers_lora(lora: LoraWeights, directory: str | os.PathLike) -> Path:
    """Writes ``directory/pytorch_lora_weights.safetensors`` (float32, ``transformer.`` keys, alpha
    in the metadata) and returns the file path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / DIFFUSERS_WEIGHT_NAME
    tensors = {
        f"transformer.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in lora.tensors.items()
    }
    save_file(tensors, str(target), metadata=lora_metadata(lora.rank, lora.alpha, lora.target_modules))
    return target
