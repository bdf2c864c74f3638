"""LoRA policies on one transformer: adapters ``default`` (trained) and ``old`` (frozen), the
reference being the base weights (adapters bypassed).

* `add_policy_adapters` injects both adapters with the original's settings (r 32, alpha 64, gaussian
  init, the attention projections of both streams) and leaves only ``default`` trainable.
* `mixed_adapter_batch` runs one forward where each batch row uses its own adapter: peft's LoRA
  layers accept ``adapter_names=[...]`` (one name per row, ``"__base__"`` = no adapter). PeftModel
  only forwards that argument in eval mode; a forward pre-hook on every LoRA layer passes it in
  any mode, so v_old and v_ref come from a single batched forward during training too.
* `save_diffusers_lora` writes the ``default`` adapter in the diffusers LoRA format with the
  LoraConfig (alpha included) in the safetensors metadata, which `load_lora_weights` reads; the
  original release dropped alpha, so its converted LoRA loaded at half strength.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict

TRAINED, OLD, BASE = "default", "old", "__base__"

# The attention projections of the image stream (to_*) and of the text stream (add_*_proj,
# to_add_out) of every MMDiT block - the modules the original release adapted.
DEFAULT_TARGET_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters. The update is (alpha / rank) * B A with A ~ N(0, 1/rank) and B = 0
    ("gaussian" init), so the adapted model starts equal to the base model."""

    rank: int = 32
    alpha: float = 64.0
    init: str | bool = "gaussian"
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def config(self) -> LoraConfig:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            init_lora_weights=self.init,
            target_modules=list(self.target_modules),
        )


def row_adapter(policy: str) -> str:
    """peft adapter name used for a row of policy `policy` ("ref" -> no adapter)."""
    return {"default": TRAINED, "old": OLD, "ref": BASE}[policy]


def add_policy_adapters(transformer: torch.nn.Module, settings: LoraSettings) -> None:
    """Adds adapters "default" and "old" (same settings), activates "default" and freezes
    everything except its LoRA matrices. "old" starts as a copy of "default"."""
    transformer.add_adapter(settings.config(), adapter_name=TRAINED)
    with warnings.catch_warnings():
        # peft warns that a second adapter is being added: that is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        transformer.add_adapter(settings.config(), adapter_name=OLD)
    transformer.set_adapter(TRAINED)
    transformer.requires_grad_(False)
    pairs = adapter_parameter_pairs(transformer, TRAINED, OLD)
    if not pairs:
        raise ValueError(f"no module of the transformer matches the LoRA targets {settings.target_modules}")
    with torch.no_grad():
        for _, trained, old in pairs:
            trained.requires_grad_(True)
            old.copy_(trained)


def adapter_parameter_pairs(
    transformer: torch.nn.Module, trained: str, old: str
) -> list[tuple[str, torch.nn.Parameter, torch.nn.Parameter]]:
    """(name without adapter, parameter of `trained`, parameter of `old`) for every LoRA matrix,
    in module order; the name is the diffusers/peft state-dict key (".lora_A.weight", ...)."""
    params = dict(transformer.named_parameters())
    pairs = []
    marker = f".{trained}."
    for name, param in params.items():
        if marker not in name or ".lora_" not in name:
            continue
        old_name = name.replace(marker, f".{old}.")
        pairs.append((name.replace(marker, "."), param, params[old_name]))
    return pairs


@contextlib.contextmanager
def mixed_adapter_batch(transformer: torch.nn.Module, adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the context every LoRA layer of `transformer` applies adapter `adapter_names[i]` to
    batch row i ("__base__" = base weights only). Every layer input must be batch-first with
    len(adapter_names) rows."""
    names = list(adapter_names)

    def pass_names(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "adapter_names": names}

    handles = [
        m.register_forward_pre_hook(pass_names, with_kwargs=True)
        for m in transformer.modules()
        if isinstance(m, LoraLayer)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _json_ready(config: dict) -> dict:
    """LoraConfig.to_dict() holds sets (target_modules); the metadata is JSON."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


@dataclasses.dataclass(frozen=True)
class LocalParameters:
    tensors: dict[str, torch.Tensor]
    sharded: bool  # some parameter was a DTensor, held here as this rank's shard


def _local_parameters(transformer: torch.nn.Module) -> LocalParameters:
    """The parameters by name, each sharded one (DTensor) as this rank's local shard.

    peft >= 0.22 gathers the DTensors of the state dict it is given (``full_tensor``, a collective
    every rank must join); handing it local tensors keeps the rank-0-only export free of collectives."""
    from torch.distributed.tensor import DTensor

    tensors, sharded = {}, False
    for name, parameter in transformer.named_parameters():
        if isinstance(parameter, DTensor):
            tensors[name], sharded = parameter.to_local(), True
        else:
            tensors[name] = parameter
    return LocalParameters(tensors, sharded)


@torch.no_grad()
def save_diffusers_lora(
    pipeline_class: type,
    directory: Path,
    transformer: torch.nn.Module,
    adapter: str,
    names: Sequence[str],
    weights: Sequence[torch.Tensor] | None = None,
) -> Path:
    """Writes adapter `adapter` (or `weights` in the order of `names`) with
    `pipeline_class.save_lora_weights`, including its LoraConfig as metadata so alpha survives.

    A sharded transformer (FSDP2) needs `weights`, its whole tensors gathered beforehand: this runs
    on rank 0 alone, so it must not gather anything itself."""
    local = _local_parameters(transformer)
    if weights is None and local.sharded:
        raise ValueError("a sharded transformer's LoRA is exported from its gathered weights: pass weights")
    state = get_peft_model_state_dict(transformer, state_dict=local.tensors, adapter_name=adapter)
    if weights is not None:
        for name, value in zip(names, weights, strict=True):
            if name not in state:
                raise KeyError(f"LoRA weight {name!r} is not a parameter of adapter {adapter!r}")
            state[name] = value.detach()
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    metadata = _json_ready(transformer.peft_config[adapter].to_dict())
    directory.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        directory, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata
    )
    return directory
