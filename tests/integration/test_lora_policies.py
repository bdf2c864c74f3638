"""The three policies on one model: LoRA default/old/ref switching, the fused old+ref forward,
gradients only into `default`, checkpoint state, LoRA export into the stock pipeline, and
full-weight mode (train, old/ref copies, save)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edit_r1.models.lora import LoraSettings
from edit_r1.models.registry import load_policy
from edit_r1.sampling import sample, sigma_schedule

SIZE = 64
ATOL = 1e-5
# Rank 4 and alpha 8: the update is scaled by alpha / r = 2, so a lost alpha (scale 1) shows up.
SMALL_LORA = LoraSettings(rank=4, alpha=8.0)


def random_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


# Model -> tiny kit folder; "qwen_2511" is the Qwen family on the 2511 (zero_cond_t) checkpoint.
KIT_FOLDERS = {
    "qwen_image_edit": "qwen_image_edit_plus",
    "qwen_2511": "qwen_image_edit_2511",
    "kontext": "flux_kontext",
}


def make_policy(tiny_kit, family: str, **options):
    path = tiny_kit / KIT_FOLDERS[family]
    if family.startswith("qwen"):
        family, options = "qwen_image_edit", {"condition_area": 48 * 48, "max_text_length": 400, **options}
    else:
        options = {"max_text_length": 24, **options}
    return load_policy(family, path, resolution=SIZE, lora=SMALL_LORA, **options)


@torch.no_grad()
def perturb(params, seed: int, scale: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=generator) * scale)


def inputs(policy, batch: int = 2):
    cond = policy.encode_condition(
        ["make it red", "remove the sky"][:batch], [random_image(1), random_image(2)][:batch]
    )
    z = policy.initial_noise(batch, torch.Generator().manual_seed(3))
    return z, torch.tensor([0.7, 0.3][:batch]), cond


FAMILIES = ["qwen_image_edit", "kontext"]


@pytest.mark.parametrize("family", [*FAMILIES, "qwen_2511"])
def test_default_old_ref_switching_and_fused_forward(tiny_kit, family):
    policy = make_policy(tiny_kit, family)
    z, sigma, cond = inputs(policy)
    with torch.no_grad():
        # Gaussian init: B = 0, so all three policies start as the base model.
        base = policy.velocity(z, sigma, cond, adapter="ref")
        assert torch.allclose(policy.velocity(z, sigma, cond), base, atol=ATOL)
        perturb(policy.trainable_parameters(), seed=0)
        trained = policy.velocity(z, sigma, cond)
        assert (trained - base).abs().max() > 1e-3
        assert torch.allclose(policy.velocity(z, sigma, cond, adapter="old"), base, atol=ATOL)
        assert torch.equal(policy.velocity(z, sigma, cond, adapter="ref"), base)
        policy.copy_default_to_old()
        assert torch.allclose(policy.velocity(z, sigma, cond, adapter="old"), trained, atol=ATOL)
        perturb(policy.old_parameters(), seed=1)
        old = policy.velocity(z, sigma, cond, adapter="old")
        assert (old - trained).abs().max() > 1e-3
        for mode in ("eval", "train"):  # the pre-hook passes adapter names in training mode too
            getattr(policy.transformer, mode)()
            fused_old, fused_ref = policy.velocity_old_and_ref(z, sigma, cond)
            assert torch.allclose(fused_old, old, atol=ATOL)
            assert torch.allclose(fused_ref, base, atol=ATOL)
        # The default policy is untouched by the other calls.
        assert torch.allclose(policy.velocity(z, sigma, cond), trained, atol=ATOL)


def test_fused_forward_with_true_cfg(tiny_kit):
    policy = make_policy(tiny_kit, "qwen_image_edit", true_cfg_scale=4.0)
    z, sigma, cond = inputs(policy)
    perturb(policy.old_parameters(), seed=4)
    with torch.no_grad():
        fused_old, fused_ref = policy.velocity_old_and_ref(z, sigma, cond)
        assert torch.allclose(fused_old, policy.velocity(z, sigma, cond, adapter="old"), atol=ATOL)
        assert torch.allclose(fused_ref, policy.velocity(z, sigma, cond, adapter="ref"), atol=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_only_default_parameters_receive_gradients(tiny_kit, family, checkpointing):
    policy = make_policy(tiny_kit, family, gradient_checkpointing=checkpointing)
    policy.transformer.train()
    z, sigma, cond = inputs(policy)
    perturb(policy.trainable_parameters(), seed=5)  # B != 0 so that A gets a gradient as well
    v = policy.velocity(z, sigma, cond)
    v_old, v_ref = policy.velocity_old_and_ref(z, sigma, cond)
    assert v.requires_grad and not v_old.requires_grad and not v_ref.requires_grad
    ((v - v_old) ** 2 + (v - v_ref) ** 2).mean().backward()
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable and all(p.requires_grad for p in policy.trainable_parameters())
    dead = dead_lora_parameters(policy)
    for name, p, old in policy._parameter_pairs():
        if name in dead:
            assert p.grad is None or p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert old.grad is None
    for name, p in policy.transformer.named_parameters():
        if id(p) not in trainable:
            assert p.grad is None and not p.requires_grad, name
    for module in (policy.vae, policy.text_encoder):
        assert all(p.grad is None for p in module.parameters())


def dead_lora_parameters(policy) -> set[str]:
    """LoRA matrices that cannot influence the output: Qwen-Image's last block only returns its
    image stream, so that block's text-query and text-output projections get no gradient (in the
    60-block real model too). FLUX ends with single-stream blocks, so nothing is dead there."""
    if policy.family != "qwen_image_edit":
        return set()
    last = len(policy.transformer.transformer_blocks) - 1
    prefixes = (f"transformer_blocks.{last}.attn.add_q_proj.", f"transformer_blocks.{last}.attn.to_add_out.")
    return {name for name, _, _ in policy._parameter_pairs() if name.startswith(prefixes)}


def test_policy_state_round_trip(tiny_kit):
    policy = make_policy(tiny_kit, "kontext")
    perturb(policy.trainable_parameters(), seed=6)
    perturb(policy.old_parameters(), seed=7)
    state = policy.policy_state_dict()
    assert set(state) == {"default", "old"} and state["default"].keys() == state["old"].keys()
    fresh = make_policy(tiny_kit, "kontext")
    fresh.load_policy_state_dict(state)
    for a, b in zip(
        policy.trainable_parameters() + policy.old_parameters(),
        fresh.trainable_parameters() + fresh.old_parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    broken = {"default": dict(list(state["default"].items())[1:]), "old": state["old"]}
    with pytest.raises(ValueError, match="policy state 'default' mismatch"):
        fresh.load_policy_state_dict(broken)


def rollout(policy, prompt: str, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        cond = policy.encode_condition([prompt], [image])
        noise = policy.initial_noise(1, torch.Generator().manual_seed(11))
        sigmas = sigma_schedule(2, policy.image_seq_len, policy.scheduler_config)
        z = sample(
            lambda x, s: policy.velocity(x, s, cond),
            noise,
            sigmas,
            solver="flow",
            deterministic=True,
            noise_level=0.0,
        ).latents
        return policy.decode(z)


def stock_images(pipe, family: str, prompt: str, image: Image.Image, monkeypatch) -> torch.Tensor:
    if family.startswith("qwen"):
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

        monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", 48 * 48)
        monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", SIZE * SIZE)
        extra = {"true_cfg_scale": 1.0}
    else:
        extra = {
            "guidance_scale": 2.5,
            "max_sequence_length": 24,
            "max_area": SIZE * SIZE,
            "_auto_resize": False,
        }
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        image=image,
        prompt=prompt,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(11),
        output_type="pt",
        **extra,
    ).images


def fresh_stock_pipeline(tiny_kit, family: str):
    if family.startswith("qwen"):
        from diffusers import QwenImageEditPlusPipeline

        from edit_r1.models.qwen_vl_processor import load_qwen_vl_processor

        path = tiny_kit / KIT_FOLDERS[family]
        return QwenImageEditPlusPipeline.from_pretrained(
            path, processor=load_qwen_vl_processor(path, subfolder="processor")
        )
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline.from_pretrained(tiny_kit / "flux_kontext")


@pytest.mark.parametrize("family", [*FAMILIES, "qwen_2511"])
def test_saved_lora_loads_into_the_stock_pipeline(tiny_kit, tmp_path, monkeypatch, family):
    policy = make_policy(tiny_kit, family)
    perturb(policy.trainable_parameters(), seed=8, scale=0.3)
    image, prompt = random_image(12), "paint it gold"
    ours = rollout(policy, prompt, image)
    assert (ours - rollout(_as_reference(policy), prompt, image)).abs().max() > 1e-3  # the LoRA matters
    policy.save_lora(tmp_path / "lora")
    pipe = fresh_stock_pipeline(tiny_kit, family)
    pipe.load_lora_weights(tmp_path / "lora")
    stock = stock_images(pipe, family, prompt, image, monkeypatch)
    assert (stock - ours).abs().max() <= 1e-4

    # Saving other weights (e.g. the EMA) in the trainable-parameter order exports those instead.
    ema = [p.detach() * 0.5 for p in policy.trainable_parameters()]
    policy.save_lora(tmp_path / "ema", weights=ema)
    with torch.no_grad():
        for p, w in zip(policy.trainable_parameters(), ema, strict=True):
            p.copy_(w)
    pipe = fresh_stock_pipeline(tiny_kit, family)
    pipe.load_lora_weights(tmp_path / "ema")
    assert (
        stock_images(pipe, family, prompt, image, monkeypatch) - rollout(policy, prompt, image)
    ).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="got 1 weights"):
        policy.save_lora(tmp_path / "bad", weights=ema[:1])


class _RefView:
    """The reference policy seen through the interface of `rollout` (velocity of 'ref')."""

    def __init__(self, policy):
        self._policy = policy

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def velocity(self, z, sigma, cond, adapter="default"):
        return self._policy.velocity(z, sigma, cond, adapter="ref")


def _as_reference(policy):
    return _RefView(policy)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_weight_mode_trains_and_saves(tiny_kit, tmp_path, family):
    policy = make_policy(tiny_kit, family, use_lora=False)
    assert policy.old_transformer is not None and policy.ref_transformer is not None
    with pytest.raises(ValueError, match="save_lora needs LoRA mode"):
        policy.save_lora(tmp_path / "x")
    z, sigma, cond = inputs(policy)
    params = policy.trainable_parameters()
    assert len(params) == len(list(policy.transformer.parameters())) == len(policy.old_parameters())
    assert all(p is not q for p, q in zip(params, policy.old_parameters(), strict=True))
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    v = policy.velocity(z, sigma, cond)
    v_old, v_ref = policy.velocity_old_and_ref(z, sigma, cond)
    assert torch.allclose(v.detach(), v_old, atol=ATOL) and torch.allclose(v_old, v_ref, atol=ATOL)
    ((v - torch.randn_like(v)) ** 2).mean().backward()
    optimizer.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    assert changed > 0.9 * len(params)
    with torch.no_grad():
        trained = policy.velocity(z, sigma, cond)
        new_old, new_ref = policy.velocity_old_and_ref(z, sigma, cond)
    assert (trained - v_old).abs().max() > 1e-4
    assert torch.equal(new_old, v_old) and torch.equal(new_ref, v_ref)  # frozen copies unchanged
    policy.copy_default_to_old()
    assert torch.allclose(policy.velocity(z, sigma, cond, adapter="old"), trained, atol=ATOL)

    saved = policy.save_full(tmp_path / "transformer")
    reloaded = type(policy.transformer).from_pretrained(saved)
    assert all(
        torch.equal(a, b) for a, b in zip(reloaded.parameters(), policy.transformer.parameters(), strict=True)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_full_weight_policy_built_for_sharding_holds_no_copies(tiny_kit, family):
    """`shard_device` (how the trainer builds a sharded run): the old/ref copies are meta-device
    shells with the trained transformer's names, shapes and dtypes and no storage, and a policy
    built so refuses to be used unsharded (the torchrun tests fill and check the shards)."""
    from edit_r1.distributed import DistInfo
    from edit_r1.parallelize import ParallelOptions, parallelize_policy, resident_bytes

    policy = make_policy(tiny_kit, family, use_lora=False, dtype=torch.bfloat16, shard_device="cpu")
    trained = dict(policy.transformer.named_parameters())
    for copy in (policy.old_transformer, policy.ref_transformer):
        params = dict(copy.named_parameters())
        assert params.keys() == trained.keys()
        assert all(p.is_meta and not p.requires_grad for p in params.values())
        assert all(p.shape == trained[n].shape and p.dtype == trained[n].dtype for n, p in params.items())
    assert resident_bytes([policy.old_transformer, policy.ref_transformer]) == 0
    assert policy.has_unmaterialised_copies() and policy.device == torch.device("cpu")
    # The trained transformer waits in its load dtype: parallelize casts it block by block.
    assert all(p.dtype == torch.bfloat16 for p in trained.values())
    with pytest.raises(ValueError, match="built to be sharded"):
        parallelize_policy(policy, ParallelOptions(fsdp_transformer=True), DistInfo())
    encoders = make_policy(tiny_kit, family, shard_text_encoders=True)
    with pytest.raises(ValueError, match="shard_text_encoders"):
        parallelize_policy(encoders, ParallelOptions(fsdp_text_encoder=True), DistInfo())
