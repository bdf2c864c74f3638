"""Every config key of Edit-R1, written once: its default, its checks and its help text.

``config/base.py`` builds its ``ConfigDict`` from :data:`KEYS` (:func:`default_config`);
``edit_r1.config.validate_config`` runs each key's checks (:func:`config_key_problems`; the rules
that involve several keys, a model family or an algorithm are written there and in the family's
and algorithm's ``config_problems``); the key tables of ``docs/configs.md`` are generated from it
(``python -m edit_r1.config_keys --write-docs``; ``tests/unit/test_config_docs.py`` fails when
they are stale); and the typed settings read their 1:1 keys through :func:`read_settings`.

Adding a key is one :class:`~edit_r1.config_schema.Key` line here (then ``--write-docs``, and the
settings field that reads it). ``python -m edit_r1.config_keys`` prints every key with its default
and help. The ``reward_client`` defaults are those of
:class:`~edit_r1.rewards.client.RewardClientSettings` (the client's own defaults, which tools use
without a config). An algorithm's own keys (``beta``, ``train.beta``, ``train.adv_clip_max``,
``train.adv_mode``, ``train.clip_range``) are checked by that algorithm (``edit_r1/algo/``), since
they matter only when it is chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import ml_collections

from edit_r1.config_schema import (
    Bound,
    CheckedBy,
    InRange,
    Integer,
    IsString,
    Key,
    NonEmpty,
    OneOf,
    PositiveMultiple,
    RewardSpec,
    build_config,
    by_name,
    group,
    key_problems,
    read_fields,
    render_section,
    replace_region,
)
from edit_r1.rewards.client import RewardClientSettings

T = TypeVar("T")

# LoRA targets of both transformers (Qwen-Image and FLUX share the attention naming in diffusers).
LORA_TARGET_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
# The latent grid is packed 2x2 on an 8x VAE downsampling, so the image side must divide by 16.
RESOLUTION_MULTIPLE = 16
_CLIENT = RewardClientSettings().as_mapping()  # the reward_client defaults (edit_r1/rewards/client.py)
_AUTO = "0 = auto"
POSITIVE, AUTO = Integer(1), Integer(0, " (0 = auto)")
ABOVE_0, AT_LEAST_0, SECONDS = Bound(0), Bound(0, inclusive=True), Bound(0, what="a number of seconds")
FRACTION = InRange(0.0, 1.0)
BACKEND = CheckedBy("edit_r1.models.base:check_speed_options", 'a diffusers attention backend name or `""`')
COMPILE_MODE = CheckedBy("edit_r1.models.base:check_speed_options", 'a `torch.compile` mode or `""`')

# fmt: off
# One entry per key: Key(name, default, help, checks, doc=longer docs text, doc_default=docs cell).
TOP_LEVEL = (
    Key("run_name", "", 'names logdir/run_name and the wandb run; "" = named from the config and start time',
        doc='run name for `logdir/run_name` and wandb; `""` = config name + start time'),
    Key("seed", 42, "base seed of sampler, noise and init; ranks offset it for noise diversity (upstream)"),
    Key("logdir", "logs", "checkpoints, metrics.jsonl and sample grids go to logdir/run_name"),
    Key("num_epochs", 100000, 'effectively "until stopped" as upstream; a final checkpoint is still written',
        (POSITIVE,)),
    Key("save_freq", 30, "epochs between checkpoints (upstream)", (POSITIVE,)),
    Key("eval_freq", 10, "epochs between evaluations on the test split (upstream)", (POSITIVE,)),
    Key("num_checkpoint_limit", 0, "0 = keep every checkpoint (as the original); N = keep the newest N",
        (Integer(0, " (0 = keep all)"),),
        doc="0 = keep every checkpoint, as the original; N = keep the newest N. A checkpoint of the "
        "starting weights is written at epoch 0, as the original saves"),
    Key("save_dir", "", 'checkpoint root (save_dir/checkpoints/checkpoint-N); "" = logdir/run_name',
        doc='checkpoint root: `save_dir/checkpoints/checkpoint-N`; `""` = `logdir/run_name` (the '
        "original's key, separate from `logdir`)"),
    Key("mixed_precision", "bf16", "no / fp16 / bf16: autocast dtype of rollouts and training (upstream bf16)",
        (OneOf("edit_r1.settings:MIXED_PRECISION_DTYPES"),),
        doc="`no` / `fp16` / `bf16`: compute dtype of the frozen weights and the autocast of every "
        "transformer forward (bf16 on CUDA and CPU; fp16 on CUDA only); trained weights, old policy, "
        "EMA and optimizer state are always float32"),
    Key("allow_tf32", True, "TF32 matmuls on Ampere+: faster, precision is ample for bf16 training",
        doc="TF32 for CUDA matmuls and cuDNN (`torch.backends.cuda.matmul.allow_tf32`, "
        "`torch.backends.cudnn.allow_tf32`); cuDNN runs deterministic without autotuning "
        "(`deterministic = True`, `benchmark = False`), as the original"),
    Key("attention_backend", "", 'diffusers attention kernel, e.g. "_native_cudnn"; "" = torch SDPA\'s pick',
        (IsString(" ('' = the default)"), BACKEND),
        doc='diffusers attention backend of the transformer, e.g. `"_native_cudnn"`; `""` = '
        "diffusers' default (torch SDPA) — see [Speed switches](#speed-switches)"),
    Key("compile_transformer", False, "torch.compile the blocks; off: each new graph costs compile time",
        doc="`torch.compile` the transformer blocks for rollouts and training"),
    Key("compile_mode", "", 'torch.compile mode, e.g. "max-autotune-no-cudagraphs"; "" = torch\'s default',
        (IsString(" ('' = the default)"), COMPILE_MODE),
        doc="`torch.compile` mode (`default`, `reduce-overhead`, `max-autotune`, "
        '`max-autotune-no-cudagraphs`, ...); `""` = torch\'s default'),
    Key("dist_timeout_s", 1800.0, "process-group timeout: a collective some rank has not joined by then fails "
        "(names the collective and the ranks that never reached it), so a hung rank ends the run", (SECONDS,),
        doc="the process group's timeout (`init_process_group(timeout=)`): a collective that some rank "
        "has not joined within it fails on the ranks waiting in it (gloo raises, NCCL's watchdog aborts "
        "the process), and the run stops with `[rank R] error: collective NAME (called from "
        "FILE:FUNCTION ...) did not complete within the process-group timeout of T s (dist_timeout_s); "
        "rank(s) [H] did not reach it (hung or dead ...)`; so a rank that hangs without dying ends the "
        "run too (see `docs/training.md`, Failures of a long run). 30 min: longer than any legitimate "
        "wait between collectives (rank 0 writing a checkpoint or evaluating while the others wait)"),
    Key("use_lora", True, "LoRA adapters (old/ref via adapter switching); False = full-weight training",
        doc="LoRA (old/ref by adapter switching); False = full weights (old/ref frozen copies)"),
    Key("resume_from", "", "checkpoint dir to resume (weights, EMA, old policy, optimizer, RNG, sampler, bans)"),
    Key("resolution", 512, "target and reference images are centre-cropped and resized to this (upstream)",
        (PositiveMultiple(RESOLUTION_MULTIPLE),)),
    Key("dataset", "", "directory with {train,test}_metadata.jsonl and the images they name",
        doc="directory with `{train,test}_metadata.jsonl` (checked, with its files, when training starts)"),
    Key("model_family", "qwen_image_edit", "qwen_image_edit / kontext: picks the model adapter",
        (OneOf("edit_r1.models.registry:family_names"),)),
    Key("max_sequence_length", 0, "text tokens of the condition; 0 = the family's original length",
        doc="text condition length (padded/truncated); 0 = the family's original length: Qwen 256 "
        "after the template prefix (masked), Kontext T5 128 (unmasked: FLUX attends to the padding)"),
    Key("condition_area", 384 * 384, "Qwen: area of the condition image given to the vision encoder",
        doc="Qwen: pixel area of the condition image for the vision encoder", doc_default="384*384"),
    Key("fsdp_text_encoder", False, "shard the frozen text encoder over ranks (FSDP2); no-op on one process",
        doc_default="False (True in shipped configs)"),
    Key("fsdp_transformer", False, "FSDP2-shard the transformer(s) per block over ranks; full weights need it",
        doc="FSDP2-shard the transformer per block over the ranks (in full-weight mode the old/ref "
        "copies too; in LoRA mode the frozen base with the adapters); float32 master shards with bf16 "
        "compute on a GPU; needed for full-weight training at real size (`docs/training.md`, "
        '"Sharding the transformer")'),
    Key("fsdp_offload_frozen", False, "with fsdp_transformer on a GPU: frozen old/ref shards in host memory",
        doc="with `fsdp_transformer` on a GPU: keep the frozen old/ref shards in pinned host memory "
        "(`python -m edit_r1.memory_plan --offload-frozen` shows the saving)"),
    Key("algorithm", "nft", "nft / grpo: the training algorithm behind the shared loop (docs/algorithm.md)",
        (OneOf("edit_r1.algo:ALGORITHMS"),),
        doc="`nft` / `grpo`: the training algorithm behind the shared loop (`docs/algorithm.md` "
        "sections 8-9)"),
    Key("beta", 1.0, "NFT strength b: v+ = b v + (1-b) v_old, v- = (1+b) v_old - b v (upstream 1.0)",
        doc="NFT strength `b`: `v+ = b v + (1-b) v_old`, `v- = (1+b) v_old - b v` (in the code: "
        "`NFTSettings.nft_beta`, `edit_r1/algo/nft.py`); checked (> 0) only when `algorithm='nft'`"),
    Key("decay_type", 1, "old-policy decay: 0 -> 0; 1 -> min(0.001 step, 0.5) (upstream); 2 -> delayed",
        (OneOf("edit_r1.algo:DECAY_TYPES"),)),
    Key("reward_fn", {"mllm_score_continue": 1.0}, "reward name -> weight", (RewardSpec(),),
        doc="reward name → weight (names: `edit_r1.rewards.registry`; `pairwise_mllm` is the pairwise "
        "group reward, `docs/algorithm.md` section 10; `source_consistency` the SSIM of the edit to its "
        'source, a defence against redrawing the scene, e.g. `{"mllm_score_continue": 1.0, '
        '"source_consistency": 0.3}`: `docs/training.md`, "Reward hacking: a defence")'),
    Key("eval_reward_fn", {"mllm_score_continue": 1.0}, "rewards computed at evaluation (pointwise only)",
        (RewardSpec(pointwise=True),)),
    Key("pretrained.model", "Qwen/Qwen-Image-Edit-2509", "hub id or local diffusers pipeline folder",
        (NonEmpty(),)),
    Key("pretrained.revision", "main", "hub revision of pretrained.model (ignored for local folders)"),
)

SAMPLE = (
    Key("sample.num_steps", 6, "rollout steps: NFT trains on clean x0 only, so a few dpm2 steps suffice (upstream)",
        (POSITIVE,)),
    Key("sample.eval_num_steps", 15, "evaluation steps: more steps give a faithful picture of the policy (upstream)",
        (POSITIVE,)),
    Key("sample.guidance_scale", 1.0, "Kontext: the embedded (distilled) guidance, 2.5 in its configs. Qwen: "
        "the original's key for the true-CFG scale of rollouts and evaluation", (AT_LEAST_0,),
        doc="Kontext: embedded guidance. Qwen: the original's key for the true-CFG scale (same as "
        "`true_cfg_scale`; setting both to different values is an error)",
        doc_default="1.0 (Kontext 2.5)"),
    Key("sample.true_cfg_scale", 1.0, 'Qwen true CFG of rollouts and evaluation, active only when > 1 (negative '
        'prompt ""); the training forwards (v, v_old, v_ref) are plain conditional passes unless train.cfg',
        (AT_LEAST_0,),
        doc='Qwen true CFG of rollouts and evaluation, active only when > 1 (negative prompt `""`); the '
        "training forwards `v`, `v_old`, `v_ref` use no CFG, as the original's, unless `train.cfg`. "
        "Kontext: must stay 1 (no true CFG)"),
    Key("sample.noise_level", 0.7, "eta of the stochastic solvers (flow/ddim/dance); unused by deterministic ones",
        (InRange(0.0, 10.0),)),
    Key("sample.solver", "dpm2", "rollout solver; dpm2 = best quality in 6 steps (dpm1/dpm2: deterministic only)",
        (OneOf("edit_r1.sampling:SOLVERS"),)),
    Key("sample.deterministic", True, "rollouts are ODE solves: NFT needs no log-probs, diversity comes from noise",
        doc="rollouts without injected noise (required by dpm1/dpm2)"),
    Key("sample.eval_solver", "flow", "evaluation solver; deterministic flow = plain Euler, as upstream evaluates",
        (OneOf("edit_r1.sampling:SOLVERS"),)),
    Key("sample.eval_deterministic", True, "evaluation without injected noise so eval scores are comparable"),
    Key("sample.eval_true_cfg", True, "evaluation runs the rollouts' true CFG (Qwen, when true_cfg_scale > 1); "
        "False: plain conditional evaluation, so guided and unguided runs are scored alike",
        doc="evaluation runs the rollouts' true CFG (Qwen, when `true_cfg_scale > 1`, as the original); "
        "False: plain conditional evaluation, so runs with and without CFG rollouts are scored alike"),
    Key("sample.eval_same_noise", False, "every evaluation draws test item i's noise as epoch 0's, so two "
        "evaluations differ only by the policy; False: fresh noise per epoch",
        doc="every evaluation draws test item `i`'s initial noise as at epoch 0 (seed `(seed, 0, i)`), so the "
        "change between two evaluations is the policy's, not the noise's (paired evaluation); False: fresh "
        "noise per epoch (seed `(seed, epoch, i)`)"),
    Key("sample.num_image_per_prompt", 12, "k, the group size: 12 rollouts per (instruction, image) (upstream)",
        (POSITIVE,)),
    Key("sample.num_groups_per_epoch", 24, "distinct groups sampled per epoch across all GPUs (upstream)",
        (POSITIVE,)),
    Key("sample.max_train_batch_size", 3, "upper bound of the auto per-GPU rollout batch (memory of a 20B model "
        "at 512px)", (POSITIVE,)),
    Key("sample.train_batch_size", 0, "per-GPU rollout batch; 0 = auto: largest bsz <= max that divides evenly",
        (AUTO,), doc_default=_AUTO),
    Key("sample.num_batches_per_epoch", 0, "0 = auto: groups*k / (world_size * train_batch_size)", (AUTO,),
        doc="rollout batches per epoch; a value you set must equal the plan's (else an error naming the "
        "`num_groups_per_epoch` that gives it)", doc_default=_AUTO),
    Key("sample.test_batch_size", 0, "per-GPU evaluation batch; 0 = auto as the original's plan: the per-GPU "
        "rollout batch, halved above 32 GPUs", (AUTO,), doc_default=_AUTO),
    Key("sample.global_std", True, "divide advantages by the std of all epoch rewards (+1e-4), not the group std"),
    Key("sample.ban_prompt", False, "low-variance group filtering + bans; on in the Qwen and *_ban_prompt configs",
        doc="low-variance group filtering and bans", doc_default="False (True for Qwen, `*_ban_prompt`)"),
    Key("sample.ban_std_thres", 0.05, "groups with reward std <= this are masked (and banned if also solved)",
        (FRACTION,)),
    Key("sample.ban_mean_thres", 0.9, "groups with reward mean >= this are masked (and banned if also low-std)",
        (FRACTION,)),
)

TRAIN = (
    Key("train.batch_size", 0, "per-GPU training minibatch; 0 = auto: equal to sample.train_batch_size (upstream)",
        doc_default=_AUTO),
    Key("train.learning_rate", 3e-4, "AdamW lr for LoRA (upstream); lower it for full-weight training", (ABOVE_0,)),
    Key("train.adam_beta1", 0.9, "AdamW beta1 (upstream)", (FRACTION,)),
    Key("train.adam_beta2", 0.999, "AdamW beta2 (upstream)", (FRACTION,)),
    Key("train.adam_weight_decay", 1e-4, "AdamW weight decay (upstream)", (AT_LEAST_0,)),
    Key("train.adam_epsilon", 1e-8, "AdamW epsilon (upstream)", (ABOVE_0,)),
    Key("train.max_grad_norm", 1.0, "gradient clipping norm before each optimizer step (upstream)", (ABOVE_0,)),
    Key("train.gradient_step_per_epoch", 1, "optimizer steps per epoch: one step over all rollouts (upstream)",
        (Bound(1, inclusive=True),)),
    Key("train.gradient_accumulation_steps", 0, "0 = auto: num_batches_per_epoch / gradient_step_per_epoch",
        doc="batches per optimizer step; a value you set is honoured when it divides the batches per "
        "epoch (steps per epoch = batches / it), else an error", doc_default=_AUTO),
    Key("train.adv_clip_max", 5.0, "C: advantages clipped to [-C, C]; also scales the NFT loss (upstream)",
        doc="C: advantage clip and loss scale (> 0, checked by the algorithm)"),
    Key("train.clip_range", 1e-4, "GRPO only: PPO clip range of the likelihood ratio (Flow-GRPO's default)"),
    Key("train.num_inner_epochs", 1, "passes over each epoch's rollouts per update (upstream 1; GRPO may use more)",
        (POSITIVE,), doc="passes over each epoch's rollouts, each reshuffled (upstream 1)"),
    Key("train.adv_mode", "all", 'all / positive_only / negative_only / one_only / binary; "all" uses both signs',
        doc="`all`, `positive_only`, `negative_only`, `one_only`, `binary` (NFT; checked by it)"),
    Key("train.timestep_fraction", 0.99, "train on int(N * fraction) of the N grid timesteps: 5 of 6 (upstream)",
        (InRange(0.0, 1.0, low_open=True),),
        doc="train on `int(N * fraction)` grid timesteps per sample (at least one)"),
    Key("train.beta", 1e-4, "KL weight: mean (v - v_ref)^2 keeps the policy near the reference model (upstream)",
        doc="KL weight (>= 0): NFT `mean (v - v_ref)^2` (in the code: `NFTSettings.kl_beta`, "
        "`GRPOSettings.kl_beta`); GRPO the transition KL to the reference (its configs: 0.04)"),
    Key("train.cfg", False, "training forwards run the rollouts' true CFG (Flow-GRPO's train.cfg); GRPO needs it "
        "with CFG rollouts (its ratio re-scores them); the original's NFT never does",
        doc="the training forwards run the rollouts' true CFG, as Flow-GRPO's `train.cfg` (needs true CFG "
        "in the rollouts). GRPO with CFG rollouts must set it: it re-scores the rollouts' step "
        "log-probs, and an unguided re-score starts the ratio away from 1. The original's NFT never "
        "guides its training forwards"),
    Key("train.ema", True, "EMA of trained weights, used for evaluation and the saved default weights (upstream)"),
    Key("train.lora_rank", 32, "LoRA rank r (upstream)"),
    Key("train.lora_alpha", 64, "LoRA alpha; scale alpha/r = 2 must survive export (upstream-differences entry 11)"),
    Key("train.lora_init", "gaussian", "gaussian / default: peft init of the LoRA A matrices (upstream: gaussian)",
        (OneOf("edit_r1.settings:LORA_INITS"),), doc="peft `init_lora_weights` (`gaussian` / `default`)"),
    Key("train.lora_target_modules", LORA_TARGET_MODULES, "attention projections of image and text streams",
        doc="LoRA targets",
        doc_default="`attn.{to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out}`"),
    Key("train.gradient_checkpointing", True, "recompute transformer activations: fits a 20B model at 512px"),
    Key("train.lora_path", "", "warm start: a LoRA to start the trained (and old) adapter from; its rank and "
        "alpha must equal lora_rank/alpha",
        doc="warm start: a LoRA (PEFT folder with `adapter_config.json`, or a diffusers file/folder, or a "
        "checkpoint's `lora/`) loaded into the trained adapter before epoch 0 (`old` copies it); its "
        "rank/alpha must equal `lora_rank`/`lora_alpha`"),
)

REWARD_CLIENT = (
    Key("reward_client.server", _CLIENT["server"], 'host:port[,host:port...] of the judge(s); "" = read REWARD_SERVER',
        doc='`host:port[,host:port]`; `""` = `REWARD_SERVER`'),
    Key("reward_client.deadline_s", _CLIENT["deadline_s"], "total per chunk incl. retries; then training stops "
        "naming the servers", (ABOVE_0,),
        doc="total per chunk incl. retries (>= `request_timeout_s`); after it the run stops with an error "
        "naming the servers (a single item the judge fails on is NaN and masked, never 0)"),
    Key("reward_client.initial_backoff_s", _CLIENT["initial_backoff_s"], "first retry delay, doubling per "
        "attempt (the original retried 1000x)", (ABOVE_0,)),
    Key("reward_client.max_backoff_s", _CLIENT["max_backoff_s"], "cap of the retry delay", (ABOVE_0,)),
    Key("reward_client.request_timeout_s", _CLIENT["request_timeout_s"], "per HTTP request: a 32B judge scoring "
        "a full chunk under load is slow", (ABOVE_0,)),
    Key("reward_client.server_cooldown_s", _CLIENT["server_cooldown_s"], "a server that failed is skipped this "
        "long while another server answers"),
    Key("reward_client.chunk_size", _CLIENT["chunk_size"], "images per request; each chunk carries only its own "
        "prompts", (POSITIVE,)),
    Key("reward_client.pairs_per_sample", _CLIENT["pairs_per_sample"], "pairwise_mllm: partners drawn per edit "
        "(seeded); 0 = all k-1 (2 judge calls a pair)",
        doc="`pairwise_mllm`: partners drawn per edit (seeded by `seed + epoch`); 0 = every pair of the group"),
    Key("reward_client.image_format", _CLIENT["image_format"], '"jpeg" (the original\'s: quality 75, what its '
        'judge saw) or "png" (lossless)', (OneOf("edit_r1.rewards.client:IMAGE_FORMATS"),),
        doc="how source and edit are sent: JPEG at PIL's default quality 75, as the original client "
        '(`flow_grpo/rewards.py` ~64-76), so the judge sees what it saw; `"png"` = lossless. The server '
        "accepts both"),
    Key("reward_client.wait_deadline_s", _CLIENT["wait_deadline_s"], "the trainer's total wait for one epoch's "
        "rewards after sampling; then it stops", (SECONDS,),
        doc="the trainer's total wait, after an epoch's sampling, for all of that epoch's rewards; past it "
        "the run stops with `reward scoring failed: waited T s (reward_client.wait_deadline_s) for this "
        "epoch's rewards from the reward server(s) URL (reward NAME): i of n batches scored, n-i (e "
        "edits) not yet; ...`. A stall shorter than it is ridden out"),
)

MONITORS = (
    Key("monitors.change_threshold", 0.1, "monitor/changed_share counts a pixel as changed when one of its "
        "channels moved by more than this: 0.1 = 25.5 of 255 levels, above JPEG and VAE noise",
        (InRange(0, 1, high_open=True, note=" (pixels in [0, 1])"),),
        doc="`monitor/changed_share` counts a pixel as changed when one of its channels moved by more "
        "than this (pixels in [0, 1]): 0.1 = 25.5 of 255 levels, above JPEG and VAE reconstruction noise"),
    Key("monitors.velocity_reference", True, "also run the reference policy at every evaluation step for "
        "monitor/velocity_ratio (one more transformer forward per evaluation step only)",
        doc="also run the reference policy at every evaluation step for `monitor/velocity_rms_ref` and "
        "`monitor/velocity_ratio` (one more transformer forward per evaluation step; training is "
        "unaffected)"),
)

WANDB = (
    Key("wandb.project", "edit_r1", "wandb project name"),
    Key("wandb.entity", "", 'wandb team/user; "" = the logged-in default'),
    Key("wandb.mode", "online", "metrics.jsonl is written in every mode", (OneOf("edit_r1.tracking:WANDB_MODES"),)),
)
# fmt: on

KEYS: tuple[Key, ...] = TOP_LEVEL + SAMPLE + TRAIN + REWARD_CLIENT + MONITORS + WANDB
KEYS_BY_NAME: dict[str, Key] = by_name(KEYS)
DOC_SECTIONS = ("", "sample", "train", "reward_client", "monitors", "wandb")  # a table each in the docs
DOCS = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def default_config() -> ml_collections.ConfigDict:
    """Every key at its default, as ``config/base.py``'s ``get_config()`` returns it."""
    return build_config(KEYS)


def config_key_problems(config: Any) -> list[str]:
    """The per-key problems of ``config`` (one line each, naming key and value), in table order."""
    return key_problems(KEYS, config)


def read_settings(cls: type[T], config: Any, *, names: Mapping[str, str] | None = None, **given: Any) -> T:
    """A settings dataclass read from ``config``: :func:`edit_r1.config_schema.read_fields` over this
    table (fields name their key; ``given`` holds the derived ones)."""
    return read_fields(cls, config, KEYS_BY_NAME, names=names, **given)


def documented(text: str) -> str:
    """``text`` (``docs/configs.md``) with every ``config-keys:SECTION`` region regenerated."""
    for section, keys in group(KEYS, DOC_SECTIONS).items():
        table = render_section(keys, f"{section}." if section else "")
        text = replace_region(text, f"config-keys:{section or 'top'}", table)
    return text


def listing() -> str:
    """Every key as ``name = default  # help``, the way ``config/base.py`` used to read."""
    return "\n".join(f"{key.name} = {key.default!r}  # {key.help}" for key in KEYS)


def main(argv: list[str] | None = None) -> int:
    """``python -m edit_r1.config_keys [--write-docs | --check-docs]``: print the keys, rewrite the
    generated tables of ``docs/configs.md``, or exit 1 when they are stale."""
    parser = argparse.ArgumentParser(prog="python -m edit_r1.config_keys", description=main.__doc__)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write-docs", action="store_true", help="rewrite the key tables of docs/configs.md")
    action.add_argument("--check-docs", action="store_true", help="exit 1 when docs/configs.md is stale")
    args = parser.parse_args(argv)
    if not (args.write_docs or args.check_docs):
        print(listing())
        return 0
    text = DOCS.read_text(encoding="utf-8")
    fresh = documented(text)
    if args.write_docs:
        DOCS.write_text(fresh, encoding="utf-8")
        return 0
    if fresh != text:
        print(f"{DOCS} is stale: run python -m edit_r1.config_keys --write-docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
