"""The one place where a built policy is made parallel: FSDP2 sharding and mixed precision.

The model code (``edit_r1/models``) never mentions parallelism; the trainer builds a policy and
hands it to :func:`parallelize_policy`, which (as torchtitan's ``parallelize``) applies in order:

1. **compile** and **gradient checkpointing** are already in place: the policy compiles each
   transformer block in place (``compile_transformer``) and diffusers recomputes each block in
   backward. Both act per block, and the FSDP2 units below are the same blocks, so each recomputed
   block all-gathers its own weights again and a compiled block runs between FSDP's hooks (dynamo
   skips FSDP hooks by default).
2. **FSDP2** ``fully_shard`` (``fsdp_transformer``): every transformer block is one unit, the root
   module (embeddings, final norm and projection) the last. In full-weight mode the trained
   transformer and the frozen ``old`` and ``ref`` copies are sharded the same way, so the local
   shard of a trained parameter and the local shard of its old copy cover the same elements; in
   LoRA mode the one transformer (frozen base + adapters ``default`` and ``old``) is sharded.
   In full-weight mode the copies are built on the meta device when the policy knows it will be
   sharded (``EditPolicy(shard_device=...)``, as the trainer builds it): each rank then allocates
   only its shards of old and ref and copies them from the trained transformer's shards, and the
   trained transformer waits on the host, so no rank ever holds an unsharded transformer on its
   device (:func:`materialise_shards`).
   ``reshard_after_forward=True`` everywhere, the root included: no-grad rollouts must leave every
   rank with sharded weights, because the optimizer, the EMA and the old-policy decay write into
   the local shards between forwards.
3. **Mixed precision** (``mixed_precision = "bf16"`` on a GPU): the trained parameters are kept as
   float32 shards (master weights), all-gathered in bf16 for compute, gradients reduce-scattered in
   float32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)``). Frozen copies stay
   in their load dtype.
4. **CPU offload** (``fsdp_offload_frozen``, CUDA only): the shards of frozen modules (old/ref
   copies, sharded text encoders) live in pinned host memory and are copied in per block.
5. The frozen **text encoders** (``fsdp_text_encoder``) are sharded per layer
   (:func:`sharded_frozen_module`).

A sharded module's forward is a collective: every rank must call it the same number of times.
:class:`ParallelPlan` tells the trainer so (``lockstep``).

Gradients of a sharded transformer are reduce-scattered by FSDP in every backward (mean over
ranks, in float32); the trainer's flat all-reduce is only for unsharded runs. Reducing in every
backward instead of once per optimizer step keeps gradients sharded: accumulating unsharded
gradients would cost a full float32 copy of the model per rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from edit_r1 import distributed
from edit_r1.models.base import EditPolicy

__all__ = [
    "ParallelOptions",
    "ParallelPlan",
    "parallelize_policy",
    "is_sharded",
    "local_shards",
    "full_tensor",
    "like_param",
    "materialise_shards",
    "resident_bytes",
    "default_shard_units",
    "sharded_frozen_module",
]


@dataclasses.dataclass(frozen=True)
class ParallelOptions:
    """What to shard. ``mixed_precision`` is the config's ``no | fp16 | bf16``."""

    fsdp_transformer: bool = False
    fsdp_text_encoder: bool = False
    offload_frozen: bool = False
    mixed_precision: str = "no"


@dataclasses.dataclass(frozen=True)
class ParallelPlan:
    """What :func:`parallelize_policy` did.

    ``sharded_transformer``: the trained transformer is FSDP2-sharded (gradients are reduced by
    FSDP). ``lockstep``: some module's forward is a collective, so every rank must run the same
    number of encodes / velocity calls (conditions encoded for the global batch, evaluation padded).
    """

    sharded_transformer: bool = False
    sharded_text_encoders: bool = False

    @property
    def lockstep(self) -> bool:
        return self.sharded_transformer or self.sharded_text_encoders


def _mixed_precision(options: ParallelOptions, device: torch.device):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device.type == "cuda" and options.mixed_precision in ("bf16", "fp16"):
        compute = torch.bfloat16 if options.mixed_precision == "bf16" else torch.float16
        return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()  # float32 on a CPU: sharded training equals unsharded training


def _offload(options: ParallelOptions, device: torch.device):
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    if options.offload_frozen and device.type == "cuda":
        return CPUOffloadPolicy(pin_memory=True)
    return OffloadPolicy()  # on a CPU the shards are already in host memory


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The FSDP units of a transformer: every block of its outermost ``nn.ModuleList``s
    (``transformer_blocks``, and Flux's ``single_transformer_blocks``)."""
    return default_shard_units(module)


def _shard(module: nn.Module, mesh, *, to_float32: set[int], mp_policy, offload_policy) -> None:
    """``fully_shard`` each block, then the root. Parameters whose ``id`` is in ``to_float32`` become
    float32 just before their unit is sharded: one block at a time is in full precision on the
    device, never the whole model."""
    from torch.distributed.fsdp import fully_shard

    def shard_one(unit: nn.Module) -> None:
        for param in unit.parameters():
            if id(param) in to_float32 and not is_sharded(param):
                param.data = param.data.float()
        fully_shard(
            unit, mesh=mesh, reshard_after_forward=True, mp_policy=mp_policy, offload_policy=offload_policy
        )

    for unit in shard_units(module):
        shard_one(unit)
    shard_one(module)


def parallelize_policy(
    policy: EditPolicy, options: ParallelOptions, dist_info: distributed.DistInfo
) -> ParallelPlan:
    """Shards ``policy`` in place as ``options`` ask (see the module docstring); a no-op plan on one
    process. Call it after the trained weights are identical on every rank (each rank keeps its
    slice of its own full copy) and before the optimizer and the EMA are built. A policy built with
    ``shard_device`` (trained transformer on the host, full-weight old/ref on the meta device) must
    be sharded here: its copies get their storage only now, one shard per rank."""
    _check_planned_sharding(policy, options, dist_info)
    if not (dist_info.is_distributed and distributed.is_dist_active()):
        return ParallelPlan()
    if options.fsdp_transformer:
        _shard_transformers(policy, options, dist_info)
    sharded_text = False
    if options.fsdp_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(policy, name, None)
            if module is not None:
                setattr(policy, name, sharded_frozen_module(module, dist_info))
                sharded_text = True
    return ParallelPlan(sharded_transformer=options.fsdp_transformer, sharded_text_encoders=sharded_text)


def _check_planned_sharding(
    policy: EditPolicy, options: ParallelOptions, dist_info: distributed.DistInfo
) -> None:
    """A policy built to be sharded (its modules wait on the host or the meta device) must be."""
    active = dist_info.is_distributed and distributed.is_dist_active()
    planned = {
        "shard_device": (getattr(policy, "shard_device", None) is not None, options.fsdp_transformer),
        "shard_text_encoders": (
            bool(getattr(policy, "shard_text_encoders", False)),
            options.fsdp_text_encoder,
        ),
    }
    for name, (built_for_it, asked) in planned.items():
        if built_for_it and not (asked and active):
            raise ValueError(
                f"the policy was built to be sharded ({name}) but that sharding is off or the process "
                f"is not part of a distributed run; build it without {name}"
            )


def _shard_transformers(
    policy: EditPolicy, options: ParallelOptions, dist_info: distributed.DistInfo
) -> None:
    """The trained transformer, then (full-weight mode) the old and ref copies, on one 1-D mesh.
    Copies built on the meta device (``EditPolicy(shard_device=...)``) are sharded there and then
    get only this rank's shards, copied from the trained transformer's (its initial weights)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy

    device = dist_info.device
    mesh = init_device_mesh(device.type, (dist_info.world_size,))
    mp_policy = _mixed_precision(options, device)
    # Master weights: the trained parameters and the old policy that follows them by decay are
    # float32 whenever the compute dtype is lower (cast here block by block if the policy left it).
    master = mp_policy.param_dtype is not None or policy.dtype != torch.float32
    to_float32 = {id(p) for p in policy.trainable_parameters() + policy.old_parameters()} if master else set()
    on_device = _offload(dataclasses.replace(options, offload_frozen=False), device)
    _shard(policy.transformer, mesh, to_float32=to_float32, mp_policy=mp_policy, offload_policy=on_device)
    for frozen in (policy.old_transformer, policy.ref_transformer):
        if frozen is None:
            continue
        frozen.requires_grad_(False)
        offload = _offload(options, device)
        _shard(frozen, mesh, to_float32=to_float32, mp_policy=mp_policy, offload_policy=offload)
        if any(p.is_meta for p in frozen.parameters()):
            home = torch.device("cpu") if isinstance(offload, CPUOffloadPolicy) else device
            materialise_shards(frozen, policy.transformer, home)


@torch.no_grad()
def materialise_shards(copy: nn.Module, source: nn.Module, device: torch.device) -> None:
    """Allocates this rank's shards of the sharded meta-device module ``copy`` on ``device`` and
    fills them from the local shards of ``source`` (the same architecture, sharded the same way, so
    both local shards cover the same elements; dtypes may differ). Buffers are cloned from
    ``source``. No rank ever holds more of ``copy`` than its own shards."""
    copy.to_empty(device=device)  # FSDP re-pads each new local shard (FSDPModule._apply)
    sources = dict(source.named_parameters())
    for name, param in copy.named_parameters():
        local_shards([param])[0].copy_(local_shards([sources[name]])[0])
    source_modules = dict(source.named_modules())
    for name, module in copy.named_modules():
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = source_modules[name]._buffers[key].detach().clone()


def resident_bytes(modules: Iterable[nn.Module | None]) -> int:
    """Bytes of the parameters of ``modules`` that this rank holds in memory: local shards of
    sharded parameters, whole tensors otherwise, nothing for the meta device."""
    total = 0
    for module in modules:
        if module is None:
            continue
        for tensor in local_shards(module.parameters()):
            if not tensor.is_meta:
                total += tensor.numel() * tensor.element_size()
    return total


# ----------------------------------------------------------------------------- shard helpers


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2-sharded parameter, its gradient or optimizer state)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_shards(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's piece of each tensor: ``to_local()`` of a DTensor (a view sharing its storage, so
    in-place updates reach the parameter), the tensor itself otherwise."""
    return [t.to_local() if is_sharded(t) else t for t in tensors]


def like_param(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``local`` (shaped like ``param``'s local shard) as a DTensor with ``param``'s layout, sharing
    storage; plain tensors pass through. Used to save EMA shards with the parameters' layout."""
    if not is_sharded(param):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor: call on every rank)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def gather_to_rank0(tensors: Sequence[torch.Tensor], is_main: bool) -> list[torch.Tensor] | None:
    """Full CPU copies of ``tensors`` on rank 0 (``None`` elsewhere); one tensor is gathered at a
    time, so no rank ever holds more than one full tensor on its device. Call on every rank."""
    out = []
    for tensor in tensors:
        whole = full_tensor(tensor.detach())
        if is_main:
            out.append(whole.to("cpu", copy=True))
        del whole
    return out if is_main else None


def default_shard_units(module: nn.Module) -> list[nn.Module]:
    """Every element of every ``nn.ModuleList`` (transformer blocks), outermost lists only."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                units.extend(child)
            else:
                visit(child)

    visit(module)
    return units


def sharded_frozen_module(
    module: nn.Module,
    dist_info: distributed.DistInfo,
    shard_unit: Callable[[nn.Module], bool] | None = None,
) -> nn.Module:
    """Shard a frozen module (e.g. a text encoder) with FSDP2 ``fully_shard`` across all ranks.

    Each rank keeps ``1/world_size`` of the weights and gathers one unit at a time during forward,
    so a large encoder no longer needs a full copy per GPU. Units are the modules selected by
    ``shard_unit`` (default: the blocks inside ``nn.ModuleList``s), then the root. Parameters are
    set to ``requires_grad=False`` and the shards placed on ``dist_info.device``. Returns ``module``
    itself (moved to ``dist_info.device``) when ``world_size == 1`` or no process group exists.

    The module must already be in the dtype it will run in. Call it only through its own ``forward`` (``module(...)``: FSDP2 gathers the
    root's parameters in the root's forward hook), under ``torch.no_grad()``, on every rank the
    same number of times (each forward is a collective). Every unit, the root included, is
    resharded after its forward, since no backward ever follows.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    module.requires_grad_(False)
    if dist_info.world_size == 1 or not distributed.is_dist_active():
        return module.to(dist_info.device)
    # No .to(device) first: fully_shard moves only this rank's shard to the mesh device, so the
    # full weights never have to fit on one GPU.
    mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
    units = (
        [m for m in module.modules() if m is not module and shard_unit(m)]
        if shard_unit
        else default_shard_units(module)
    )
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    # The root too: nothing runs backward through a frozen module, so keep it sharded between calls.
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module
