"""Base config of Edit-R1: every key, with the shipped default and why it is the default.

Named configs (``config/qwen_image_edit_nft.py``, ``config/kontext_nft.py``) start from
``get_config()`` here and change only what differs. Every key can be overridden on the command
line, e.g. ``--config.train.learning_rate=1e-4``. Keys documented as "0 = auto" are filled at start
by ``edit_r1.config.apply_batch_plan`` from the real world size (docs/configs.md#batch-planning). The full key
reference with units lives in ``docs/configs.md``.
"""

import ml_collections

from edit_r1.rewards.client import RewardClientSettings

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


def _sample_config() -> ml_collections.ConfigDict:
    sample = ml_collections.ConfigDict()
    sample.num_steps = 6  # rollout steps: NFT trains on clean x0 only, so a few dpm2 steps suffice (upstream)
    sample.eval_num_steps = (
        15  # evaluation steps: more steps give a faithful picture of the policy (upstream)
    )
    # Kontext: the embedded (distilled) guidance, 2.5 in its configs. Qwen: the original's key for
    # the true-CFG scale of rollouts and evaluation (same meaning as sample.true_cfg_scale).
    sample.guidance_scale = 1.0
    # Qwen true CFG of rollouts and evaluation, active only when > 1 (negative prompt ""); the
    # training forwards (v, v_old, v_ref) are plain conditional passes, as the original's.
    sample.true_cfg_scale = 1.0
    sample.noise_level = 0.7  # eta of the stochastic solvers (flow/ddim/dance); unused by deterministic ones
    sample.solver = (
        "dpm2"  # rollout solver: flow | ddim | dance | dpm1 | dpm2; dpm2 = best quality in 6 steps
    )
    sample.deterministic = True  # rollouts are ODE solves: NFT needs no log-probs, diversity comes from noise
    sample.eval_solver = "flow"  # evaluation solver; deterministic flow = plain Euler, as upstream evaluates
    sample.eval_deterministic = True  # evaluation without injected noise so eval scores are comparable
    sample.num_image_per_prompt = 12  # k, the group size: 12 rollouts per (instruction, image) (upstream)
    sample.num_groups_per_epoch = 24  # distinct groups sampled per epoch across all GPUs (upstream)
    sample.max_train_batch_size = (
        3  # upper bound of the per-GPU rollout batch (memory of a 20B model at 512px)
    )
    sample.train_batch_size = 0  # per-GPU rollout batch; 0 = auto: largest bsz <= max that divides evenly
    sample.num_batches_per_epoch = 0  # 0 = auto: groups*k / (world_size * train_batch_size)
    # per-GPU evaluation batch; 0 = auto as the original's plan: the per-GPU rollout batch, halved
    # above 32 GPUs
    sample.test_batch_size = 0
    sample.global_std = True  # divide advantages by the std of all epoch rewards (+1e-4), not the group std
    sample.ban_prompt = False  # low-variance group filtering + bans; on in the Qwen and *_ban_prompt configs
    sample.ban_std_thres = 0.05  # groups with reward std <= this are masked (and banned if also solved)
    sample.ban_mean_thres = 0.9  # groups with reward mean >= this are masked (and banned if also low-std)
    return sample


def _train_config() -> ml_collections.ConfigDict:
    train = ml_collections.ConfigDict()
    train.batch_size = 0  # per-GPU training minibatch; 0 = auto: equal to sample.train_batch_size (upstream)
    train.learning_rate = 3e-4  # AdamW lr for LoRA (upstream); lower it for full-weight training
    train.adam_beta1 = 0.9  # AdamW beta1 (upstream)
    train.adam_beta2 = 0.999  # AdamW beta2 (upstream)
    train.adam_weight_decay = 1e-4  # AdamW weight decay (upstream)
    train.adam_epsilon = 1e-8  # AdamW epsilon (upstream)
    train.max_grad_norm = 1.0  # gradient clipping norm before each optimizer step (upstream)
    train.gradient_step_per_epoch = 1  # optimizer steps per epoch: one step over all rollouts (upstream)
    train.gradient_accumulation_steps = 0  # 0 = auto: num_batches_per_epoch / gradient_step_per_epoch
    train.adv_clip_max = 5.0  # C: advantages clipped to [-C, C]; also scales the NFT loss (upstream)
    train.clip_range = 1e-4  # GRPO only: PPO clip range of the likelihood ratio (Flow-GRPO's default)
    train.num_inner_epochs = 1  # passes over each epoch's rollouts per update (upstream 1; GRPO may use more)
    train.adv_mode = "all"  # all | positive_only | negative_only | one_only | binary; "all" uses both signs
    train.timestep_fraction = 0.99  # train on int(N * fraction) of the N grid timesteps: 5 of 6 (upstream)
    train.beta = 1e-4  # KL weight: mean (v - v_ref)^2 keeps the policy near the reference model (upstream)
    train.ema = True  # EMA of trained weights, used for evaluation and the saved default weights (upstream)
    train.lora_rank = 32  # LoRA rank r (upstream)
    train.lora_alpha = 64  # LoRA alpha; scale alpha/r = 2 must survive export (upstream-differences entry 11)
    train.lora_init = "gaussian"  # gaussian | default: peft init of the LoRA A matrices (upstream: gaussian)
    train.lora_target_modules = LORA_TARGET_MODULES  # attention projections of image and text streams
    train.gradient_checkpointing = True  # recompute transformer activations: fits a 20B model at 512px
    # warm start: a LoRA to start the trained (and old) adapter from, as a PEFT folder
    # (adapter_config.json) or a diffusers file/folder; its rank and alpha must equal lora_rank/alpha
    train.lora_path = ""
    return train


def _reward_client_config() -> ml_collections.ConfigDict:
    # The defaults are those of the typed settings the trainer builds from this section
    # (edit_r1.rewards.client.RewardClientSettings: RetryPolicy and DEFAULT_CHUNK_SIZE), flat keys:
    # server             host:port[,host:port...] of the judge(s); "" = read REWARD_SERVER
    # request_timeout_s  per HTTP request: a 32B judge scoring a full chunk under load is slow
    # deadline_s         total per chunk incl. retries; then training stops naming the servers
    # initial_backoff_s  first retry delay, doubling per attempt (the original retried 1000x)
    # max_backoff_s      cap of the retry delay
    # server_cooldown_s  a server that failed is skipped this long while another one answers
    # chunk_size         images per request; each chunk carries only its own prompts
    # pairs_per_sample   pairwise_mllm: partners drawn per edit (seeded); 0 = all k-1 (2 judge calls a pair)
    # image_format       "jpeg" (the original's: quality 75, what its judge saw) or "png" (lossless)
    # wait_deadline_s    the trainer's total wait for one epoch's rewards after sampling; then it stops
    return ml_collections.ConfigDict(RewardClientSettings().as_mapping())


def _monitors_config() -> ml_collections.ConfigDict:
    # Reward-hacking monitors logged at every evaluation (edit_r1/monitors.py, docs/training.md).
    monitors = ml_collections.ConfigDict()
    # monitor/changed_share counts a pixel as changed when one of its channels moved by more than
    # this (pixels in [0, 1]): 0.1 = 25.5 of 255 levels, above JPEG and VAE reconstruction noise
    monitors.change_threshold = 0.1
    # also run the reference policy at every evaluation step for monitor/velocity_ratio (one more
    # transformer forward per step of the evaluation only)
    monitors.velocity_reference = True
    return monitors


def _wandb_config() -> ml_collections.ConfigDict:
    wandb = ml_collections.ConfigDict()
    wandb.project = "edit_r1"  # wandb project name
    wandb.entity = ""  # wandb team/user; "" = the logged-in default
    wandb.mode = "online"  # online | offline | disabled; metrics.jsonl is written in every mode
    return wandb


def get_config() -> ml_collections.ConfigDict:
    """All keys with their shipped defaults (docs/configs.md#every-key); named configs override a few."""
    config = ml_collections.ConfigDict()
    config.run_name = ""  # "" = named from the config and start time; names logdir/run_name and the wandb run
    config.seed = 42  # base seed of sampler, noise and init; ranks offset it for noise diversity (upstream)
    config.logdir = "logs"  # checkpoints, metrics.jsonl and sample grids go to logdir/run_name
    config.num_epochs = 100000  # effectively "until stopped" as upstream; a final checkpoint is still written
    config.save_freq = 30  # epochs between checkpoints (upstream)
    config.eval_freq = 10  # epochs between evaluations on the test split (upstream)
    config.num_checkpoint_limit = 0  # 0 = keep every checkpoint (as the original); N = keep the newest N
    config.save_dir = ""  # checkpoint root (save_dir/checkpoints/checkpoint-N); "" = logdir/run_name
    config.mixed_precision = (
        "bf16"  # no | fp16 | bf16: autocast dtype of rollouts and training (upstream bf16)
    )
    config.allow_tf32 = True  # TF32 matmuls on Ampere+: faster, precision is ample for bf16 training
    config.attention_backend = ""  # diffusers attention kernel, e.g. "_native_cudnn"; "" = torch SDPA's pick
    config.compile_transformer = False  # torch.compile the blocks; off: each new graph costs compile time
    config.compile_mode = ""  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"; "" = torch's default
    config.dist_timeout_s = 1800.0  # process-group timeout: a collective some rank has not joined by then
    # fails (names the collective and the ranks that never reached it), so a hung rank ends the run
    config.use_lora = True  # LoRA adapters (old/ref via adapter switching); False = full-weight training
    config.resume_from = (
        ""  # checkpoint dir to resume (weights, EMA, old policy, optimizer, RNG, sampler, bans)
    )
    config.resolution = 512  # target and reference images are centre-cropped and resized to this (upstream)
    config.dataset = ""  # directory with {train,test}_metadata.jsonl and the images they name
    config.model_family = "qwen_image_edit"  # qwen_image_edit | kontext: picks the model adapter
    config.max_sequence_length = 0  # text tokens of the condition; 0 = the family's original length:
    # Qwen 256 after the template prefix, Kontext T5 128 (FLUX attends to T5 padding: it changes results)
    config.condition_area = 384 * 384  # Qwen: area of the condition image given to the vision encoder
    config.fsdp_text_encoder = False  # shard the frozen text encoder over ranks (FSDP2); no-op on one process
    config.fsdp_transformer = (
        False  # FSDP2-shard the transformer(s) per block over ranks; full weights need it
    )
    config.fsdp_offload_frozen = False  # with fsdp_transformer on a GPU: frozen old/ref shards in host memory
    config.algorithm = "nft"  # nft | grpo: the training algorithm behind the shared loop (docs/algorithm.md)
    config.beta = 1.0  # NFT strength b: v+ = b v + (1-b) v_old, v- = (1+b) v_old - b v (upstream 1.0)
    config.decay_type = 1  # old-policy decay: 0 -> 0; 1 -> min(0.001 step, 0.5) (upstream); 2 -> delayed
    config.reward_fn = ml_collections.ConfigDict({"mllm_score_continue": 1.0})  # reward name -> weight
    config.eval_reward_fn = ml_collections.ConfigDict({"mllm_score_continue": 1.0})  # rewards at evaluation
    config.pretrained = ml_collections.ConfigDict()
    config.pretrained.model = "Qwen/Qwen-Image-Edit-2509"  # hub id or local diffusers pipeline folder
    config.pretrained.revision = "main"  # hub revision of pretrained.model (ignored for local folders)
    config.sample = _sample_config()
    config.train = _train_config()
    config.reward_client = _reward_client_config()
    config.monitors = _monitors_config()
    config.wandb = _wandb_config()
    return config
