"""Typed, validated run configuration: YAML files plus `key.sub=value` command-line overrides.

Every knob is named for what it does. The arithmetic a user needs (see README):
  responses generated per step = fresh prompts x samples_per_prompt, where fresh prompts =
      prompts_per_step - round(offpolicy_fraction x prompts_per_step) in the mix phase, prompts_per_step after;
  optimizer steps per training step = updates_per_batch x (training responses / minibatch_size).

Layering: config sits below every module that reads a Config. Validation checks names against light tables
(`ROLLOUT_ENGINES`) and registries that import nothing above config; it never imports an engine or the schedule
(the schedule imports `replayed_prompts` from here). tests/test_imports.py keeps the import graph acyclic.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remix_rft.config_parsing import build_dataclass, deep_merge, load_yaml, parse_override
from remix_rft.data.prompts import DEFAULT_INSTRUCTION
from remix_rft.errors import ConfigError, DataError, PathNotFoundError

logger = logging.getLogger(__name__)

# The rollout engines `rollout.ENGINES` builds, by name: a light table, so validating a config imports no engine
# (transformers, vLLM) and config.py stays below every module that reads a Config (tests/test_imports.py).
ROLLOUT_ENGINES = ("hf", "vllm")


def native_bf16_dtype(device: str) -> str:
    """`model.dtype=auto` on `device` (a `model.device` value): bfloat16 where it runs natively, else float32
    (`REMIX_RFT_AUTO_DTYPE` overrides the CPU's choice; see remix_rft.hardware)."""
    from remix_rft.hardware import auto_dtype

    return auto_dtype(device)[0]


@dataclass
class LoraSettings:
    """LoRA adapters (PEFT) instead of full finetuning: README, LoRA."""

    r: int = 0  # adapter rank; 0 = full finetuning (no adapters)
    alpha: float = 32.0  # scale alpha / r; a fixed alpha keeps the best learning rate nearly independent of r
    dropout: float = 0.0  # on the adapter's input (0: the no-grad log-prob passes and the update see the same model)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    # the adapters' learning rate; null: LORA_LR_MULTIPLIER x train.lr (LoRA learns at ~10x the full-finetuning
    # rate; at the same rate it barely moves). The critic's adapters likewise use critic_lr times the multiplier.
    lr: float | None = None

    @property
    def enabled(self) -> bool:
        return self.r > 0

    @property
    def peft_target_modules(self) -> list[str] | str:
        return "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)


LORA_LR_MULTIPLIER = 10.0


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # embedded default, a local HF dir, a hub name, or "tiny-random[:SEED]"
    # compute dtype: float32 | bfloat16. bfloat16 = mixed precision: the trained models (policy, critic) keep float32
    # master weights and AdamW state, forward/backward/generation run under bf16 autocast, and the frozen copies
    # (reference, lagged precedent) are stored in bf16. auto: bfloat16 where the hardware computes it faster (a CUDA
    # GPU with bf16, a CPU with AMX, a CPU with AVX512-BF16 whose bf16 matmuls measure >= 1.2x float32's), else float32
    # (emulated bf16 is ~3x slower than float32; some AVX512-BF16 CPUs without AMX run bf16 matmuls at half speed).
    dtype: str = "float32"
    autocast_bf16: bool = False  # older spelling of dtype=bfloat16 (true means exactly that)
    # storage dtype of the frozen copies (reference, lagged precedent): auto = the compute dtype. bfloat16 under float32
    # compute halves their memory: in a pass each module's weights are upcast to float32 for its own forward only
    # (models.float32_weights_per_module), so the log-probs are exactly those of the bf16-rounded weights. Single process
    # only: under torchrun they are stored in float32 then, with a warning.
    frozen_dtype: str = "auto"
    # the LM head's matmul under bf16 compute: auto = the compute dtype; float32 = the head (and its log-softmax) in
    # float32 in the sampler (HF engine) and the trainer alike: on the embedded model it more than halves their
    # log-prob gap, for a slower head matmul in training chunks (README, Precision). No effect under float32 compute.
    lm_head_dtype: str = "auto"
    # recompute each layer's activations in backward instead of keeping them: less memory, ~1/3 more update time.
    # auto = on only where memory is short: when `remix-rft plan`'s estimated update peak without it passes 80% of
    # the memory at hand at the start (free GPU memory; on CPU available RAM, within a container's limit, shared by
    # this host's ranks); off where the estimate cannot read the model's config; the log says which and why
    gradient_checkpointing: bool | str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def compute_dtype(self) -> str:
        """The dtype forward/backward passes run in and frozen copies are stored in."""
        if self.autocast_bf16:
            return "bfloat16"
        return native_bf16_dtype(self.device) if self.dtype == "auto" else self.dtype

    @property
    def bf16(self) -> bool:
        return self.compute_dtype == "bfloat16"

    @property
    def lm_head_compute_dtype(self) -> str:
        """The dtype the LM head's matmul runs in."""
        return self.compute_dtype if self.lm_head_dtype == "auto" else self.lm_head_dtype

    @property
    def frozen_storage_dtype(self) -> str:
        """The dtype the frozen copies (reference, lagged precedent) are stored in."""
        return self.compute_dtype if self.frozen_dtype == "auto" else self.frozen_dtype


@dataclass
class AlgorithmConfig:
    name: str = "grpo"  # grpo | ppo (ppo trains a critic and uses GAE)
    advantage_estimator: str | None = None  # default: "grpo" for grpo, "gae" for ppo; "drgrpo" also built in
    policy_loss: str = "mix_ppg"  # registry name; mix_ppg reduces to the PPO clipped loss on fresh data
    loss_agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    loss_norm_len: int | None = None  # the constant for seq-mean-token-sum-norm (default: rollout.max_new_tokens)
    clip_eps: float = 0.2
    kl_coef: float = 0.001  # beta: weight of the KL(-Convex) penalty
    kl_estimator: str = "k3"  # k1 | k2 | k3 (low_var_kl)
    kl_in_reward: bool = False  # PPO-style: subtract kl_coef * k1 from the token rewards instead of a loss term
    entropy_coef: float = 0.0
    gamma: float = 1.0  # GAE discount (ppo)
    gae_lambda: float = 1.0  # GAE lambda (ppo)
    value_clip: float = 0.5  # critic clipping range (ppo)
    whiten_advantages: bool = True  # whiten GAE advantages over the batch's response tokens (ppo)
    grpo_eps: float = 1e-6


@dataclass
class AutoReincarnation:
    """When `remix.reincarnate_at=auto` switches back to on-policy training (README, Adaptive reincarnation). Each
    trigger compares a moving mean over `window` steps with its threshold (null turns the trigger off) and fires after
    `patience` consecutive steps past it; the reward plateau counts steps itself. Reincarnation happens before the step
    after the one that fired, never before `min_step` + 1, and at `max_step` + 1 at the latest."""

    min_step: int = 4  # no trigger fires before this step: the replay buffer and the length baseline need a few steps
    max_step: int | None = None  # the fixed fallback: reincarnate after this step if nothing fired (null: never)
    window: int = 3  # steps in each signal's moving mean (one step of 32 responses is noisy)
    patience: int = 2  # consecutive steps a signal must be past its threshold
    # effective sample size of the replayed tokens' importance weights pi_theta/mu, as a share of their count (1 = all
    # weights equal): below it, replay adds variance rather than data. Measured on the CPU study: 0.94-0.99 while
    # replay helps
    ess_below: float | None = 0.8
    # the fresh responses' mean length against its mean over the first `baseline_steps` steps (the on-policy start):
    # a drop of more than this share is the Whipping effect (METHOD.md: replay pushes responses short)
    length_drop_above: float | None = 0.3
    baseline_steps: int = 3
    # k3 KL(pi_k || pi_{k-1}), the last update's size: far above its usual size (3e-3 to 7e-3 on the CPU study) the
    # replayed rollouts of the last policies age fast. Needs a lagged precedent (remix.precedent=lagged, kl_coef > 0)
    kl_precedent_above: float | None = 0.03
    # steps without a gain of `plateau_min_gain` in the moving mean of the fresh reward over its best so far
    plateau_steps: int | None = 8
    plateau_min_gain: float = 0.02


@dataclass
class ReMixConfig:
    enabled: bool = True  # False: plain on-policy PPO/GRPO (p = 0, one update pass, no reincarnation)
    offpolicy_fraction: float = 0.4  # p: share of each step's prompts replayed from past policies
    history_window: int = 2  # N: replay from the rollouts of the last N policies
    updates_per_batch: int = 2  # m: passes over the mixed batch per step (update-to-data ratio)
    # T: last mix-phase step; null = never switch back to on-policy; auto = when a trigger of `auto_reincarnation` fires
    reincarnate_at: int | str | None = 50
    auto_reincarnation: AutoReincarnation = field(default_factory=AutoReincarnation)
    kl_convex: bool = True  # False: the KL term uses the base reference only (weight 1)
    kl_convex_start: int = 50
    kl_convex_interval: int = 10
    kl_convex_decrement: float = 0.1
    kl_convex_floor: float = 0.5
    precedent: str = "lagged"  # lagged: a copy of the previous step's weights; proximal: reuse pi_k's log-probs
    # which buffered groups are replayed (buffer.py; README, Spending rollouts well): uniform = the paper's, every
    # group of the window equally likely; informative = groups whose advantages are all 0 are never replayed, the rest
    # drawn by priority (|advantage|, recency, replay count), and they take the place of the step's uninformative
    # fresh groups in the batch (replace_uninformative)
    replay: str = "uniform"
    replay_recency: float = 0.5  # informative: priority factor per step of age beyond the newest (1: no preference)
    max_replays: int = 2  # informative: a group is replayed at most this many times
    # informative: buffered groups replace fresh groups with all-equal rewards (GRPO advantage 0) in the mix phase
    replace_uninformative: bool = True
    # M2PO's second-moment mask on replayed tokens (algos.second_moment_mask): null = off; else the fewest replayed
    # tokens with the largest (log pi_k/mu)^2 leave the loss that bring the mean of the rest to at most this (0.04)
    replay_m2_threshold: float | None = None


@dataclass
class TrainConfig:
    steps: int = 20
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    minibatch_size: int = 16  # responses per optimizer step
    micro_batch_tokens: int = 4096  # padded tokens per forward/backward (bounds memory); grads accumulate
    logprob_chunk_tokens: int | None = 512  # response tokens per LM-head chunk (null: whole micro-batch at once)
    # the rows of a forward that repeat a prompt (a group's samples) run it once: its KV cache, gradients included,
    # serves them all (batching.py); the HF sampler shares a prompt's prefill too. Same log-probs and gradients as
    # the plain forward up to float rounding. Not where activation checkpointing is on, the model's cache is not
    # plain keys / values, or in the update under torchrun (FSDP2); false: the plain forward everywhere
    shared_prompt_forward: bool = True
    lr: float = 1e-6
    critic_lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    seed: int = 0
    peak_tflops: float | None = None  # device peak for perf/mfu (null: a matmul benchmark, measured once, cached)
    # DAPO's dynamic sampling: generate more prompts until the step has its planned number of fresh groups whose
    # rewards are not all equal (at most dynamic_sampling_max_rounds generation rounds; then the batch is filled with
    # uninformative groups). Every generated response counts in rollouts/total, trained on or not
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 4
    # seconds a blocking phase (generation, scoring, a weight sync, an update's collectives, an evaluation, a checkpoint
    # save) may go without progress before the run stops with one line naming the phase and the rank, and the
    # checkpoint to resume from (remix_rft/watchdog.py; a call stuck inside C, e.g. NCCL, ends the process with exit
    # status 4). Set it above the longest legitimate phase (a held-out evaluation on a slow machine); null: off
    watchdog_seconds: float | None = 7200.0


@dataclass
class RolloutConfig:
    engine: str = "hf"
    max_new_tokens: int = 256
    temperature: float = 1.0
    # top_p < 1 / top_k > 0: the trainer's log-probs (pi_k, the update) are those of the same truncated distribution
    top_p: float = 1.0
    top_k: int = 0
    max_batch_size: int = 64  # sequences per generate() call
    behaviour_logprobs: str = "recompute"  # recompute: trainer log-probs of pi_k (as verl); engine: the sampler's
    # the HF engine samples the trainer's own module, so its log-probs of this step's fresh responses are pi_k's: true
    # takes them as pi_k (and the behaviour) and skips those rows' no-grad pass (replayed rows keep theirs); auto: where
    # they equal the trainer's, the HF engine in float32 (gap 3e-5 max), checked on the run's first step against
    # rollout.sync_check_bound (off, with a warning, above it). Under bf16 autocast they differ (mean 0.033, max 0.35:
    # 0.5% of tokens start outside the clip range), so there only true uses them, as verl's bypass mode does.
    # Needs behaviour_logprobs=recompute, no top-p / top-k, no pipeline (docs/guides/mismatch.md)
    reuse_sampler_logprobs: bool | str = "auto"
    # sampler-trainer mismatch correction (needs behaviour_logprobs=engine): none | tis (truncated IS) | mis (masked)
    is_correction: str = "none"
    is_cap: float = 2.0  # tis: weights above it are truncated to it; mis: tokens/sequences above it get weight 0
    is_level: str = "token"  # token | sequence (the product of the response's token ratios)
    # rejection mask beside the IS weights (needs behaviour_logprobs=engine; combinable with is_correction):
    # none | geo_mean (sequence: geometric mean of the token ratios) | icepop (token ratio), see algos/is_correction.py
    mismatch_mask: str = "none"
    # the band kept; null: the mask's default, geo_mean [1/1.001, 1.001] (verl), icepop [0.5, 5] (IcePop)
    mismatch_mask_low: float | None = None
    mismatch_mask_high: float | None = None
    # one-step-off generation (rollout/pipeline.py): the next step's fresh responses are generated, by a snapshot of
    # the weights this step's update starts from, while the update runs; they train one policy version late, corrected
    # by the behaviour ratio as replayed rollouts are. Costs a float32 copy of the policy (the snapshot)
    pipeline: bool = False
    # policy versions a fresh response may lag behind (pipeline only): 1 overlaps generation with the update; 0 starts
    # the job after the update (no overlap: the same run as without the pipeline, a check of the machinery)
    max_staleness: int = 1
    # after every weight push to an engine with its own copy (vLLM, the pipelined job's snapshot), its log-probs of a
    # fixed probe sequence must agree with the trainer's (rollout/sync_check.py); null bound: 1e-3 float32, 0.15 bf16
    sync_check: bool = True
    sync_check_bound: float | None = None  # mean |engine - trainer| log-prob gap allowed (null: by precision)
    # engine=vllm only
    gpu_memory_utilization: float = 0.3  # GPU share the vLLM engine may hold (weights + KV cache)
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # prompt + response tokens per sequence (default: the model's context)
    enable_sleep_mode: bool | None = None  # free the engine's GPU memory during updates (default: on for GPU)
    dtype: str | None = None  # vLLM weights dtype (default: the policy's, model.dtype)
    kv_cache_gb: float | None = None  # KV cache size (default: 1 GiB on CPU, gpu_memory_utilization on GPU)


@dataclass
class DataConfig:
    train: str = "arithmetic"  # a built-in name, a .jsonl/.json/.parquet path, or hf:NAME[:SPLIT]
    train_options: dict[str, Any] = field(default_factory=dict)  # e.g. arithmetic: {size, digits, operations}
    data_dir: str | None = None  # paper data sets (defaults to $REMIX_DATA_DIR)
    problem_key: str | None = None
    answer_key: str | None = None
    limit: int | None = None
    instruction: str | None = DEFAULT_INSTRUCTION
    system_prompt: str | None = None
    # prompt selection before generation (data/selection.py): none | skip_uninformative (GRESO-like: a prompt whose
    # last groups all had equal rewards is skipped with probability min(selection_max_skip, 1 - (1 -
    # selection_skip_base) ** streak), and kept without a test after selection_revisit_after skips in a row)
    selection: str = "none"
    selection_skip_base: float = 0.5
    selection_max_skip: float = 0.9
    selection_revisit_after: int = 4


@dataclass
class RewardConfig:
    name: str = "math"
    format_weight: float = 0.0
    timeout: float = 5.0
    correct_reward: float = 1.0
    incorrect_reward: float = 0.0
    require_boxed: bool = False
    num_workers: int = 1
    custom: str | None = None  # package.module:function (or an object with score(responses, examples))
    # seconds the custom reward may take on one response before the run stops with an error naming it (null: no limit)
    custom_timeout: float | None = 60.0
    grader: str = "auto"  # strict | paper | auto (paper protocol on the paper's five benchmarks, strict elsewhere)
    stop_on_hacking: bool = False  # end the run (checkpoint kept) when the reward-hacking alarm trips
    hacking_audit_samples: int = 64  # responses a step the strict audit grader regrades
    hacking_patience: int = 2  # consecutive steps a signal must trip before the alarm
    hacking_min_responses: int = 8  # rewarded responses a share signal needs before it can trip
    hacking_thresholds: dict[str, float] = field(default_factory=dict)  # overrides, see rewards/hacking.py


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: ["arithmetic"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-benchmark load_examples options
    every: int = 0  # evaluate every N steps during training (0: only before and after)
    before_training: bool = True
    after_training: bool = True
    limit: int | None = 100
    greedy: bool = True
    samples: int = 1
    temperature: float = 0.6
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens


@dataclass
class LoggingConfig:
    output_dir: str = "runs"
    run_name: str | None = None  # default: <algorithm>-<timestamp>
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "remix-rft"
    progress: bool = True


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N steps (0: only at the end)
    keep: int = 2  # most recent checkpoints kept
    save_final: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    remix: ReMixConfig = field(default_factory=ReMixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def lagged_precedent(self) -> bool:
        """Whether the KL-Convex precedent pi_{k-1} is a lagged policy of its own (a copy, or under LoRA an adapter
        snapshot): a KL term, ReMix with KL-Convex, and `remix.precedent=lagged`."""
        remix = self.remix
        return self.algorithm.kl_coef > 0 and remix.enabled and remix.kl_convex and remix.precedent == "lagged"

    @property
    def auto_reincarnation(self) -> bool:
        """Whether a reincarnation trigger (reincarnation.py) decides when ReMix goes back to on-policy training."""
        return self.remix.enabled and self.remix.reincarnate_at == "auto"

    @property
    def policy_lr(self) -> float:
        """The policy's learning rate: train.lr, or the adapters' (model.lora.lr, default 10x train.lr)."""
        lora = self.model.lora
        if not lora.enabled:
            return self.train.lr
        return lora.lr if lora.lr is not None else LORA_LR_MULTIPLIER * self.train.lr

    @property
    def critic_lr(self) -> float:
        lora = self.model.lora
        return LORA_LR_MULTIPLIER * self.train.critic_lr if lora.enabled else self.train.critic_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def advantage_estimator(self) -> str:
        if self.algorithm.advantage_estimator:
            return self.algorithm.advantage_estimator
        return "gae" if self.algorithm.name == "ppo" else "grpo"

    def validate(self) -> Config:
        """Check ranges and cross-field constraints; raise ConfigError naming the key."""
        a, r, t, ro = self.algorithm, self.remix, self.train, self.rollout
        _check(a.name in ("grpo", "ppo"), "algorithm.name", f"must be 'grpo' or 'ppo', got {a.name!r}")
        _check(a.loss_agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"), "algorithm.loss_agg",
               f"unknown aggregation {a.loss_agg!r}")
        _check(a.kl_estimator in ("k1", "k2", "k3", "low_var_kl"), "algorithm.kl_estimator",
               f"must be k1, k2 or k3, got {a.kl_estimator!r}")
        _check(a.clip_eps > 0, "algorithm.clip_eps", f"must be > 0, got {a.clip_eps}")
        _check(a.kl_coef >= 0, "algorithm.kl_coef", f"must be >= 0, got {a.kl_coef}")
        _check(0 <= a.gamma <= 1 and 0 <= a.gae_lambda <= 1, "algorithm.gamma/gae_lambda", "must be in [0, 1]")
        if self.advantage_estimator == "gae":
            _check(a.name == "ppo", "algorithm.advantage_estimator", "gae needs a critic: use algorithm.name=ppo")
        else:
            _check(a.name != "ppo", "algorithm.advantage_estimator",
                   f"algorithm.name=ppo trains a critic on GAE returns, so it needs advantage_estimator=gae (got "
                   f"{self.advantage_estimator!r}); for sequence-level advantages use algorithm.name=grpo")
            _check(not (a.kl_in_reward and a.kl_coef > 0), "algorithm.kl_in_reward",
                   f"the KL-in-reward penalty is per token and needs per-token returns (advantage_estimator=gae, "
                   f"algorithm.name=ppo); with {self.advantage_estimator!r} advantages it would apply no KL at all. "
                   f"Use kl_in_reward=false (the KL loss term, as GRPO does)")
        _check(0 <= r.offpolicy_fraction < 1, "remix.offpolicy_fraction",
               f"must be in [0, 1), got {r.offpolicy_fraction}")
        _check(r.history_window >= 1, "remix.history_window", f"must be >= 1, got {r.history_window}")
        _check(r.updates_per_batch >= 1, "remix.updates_per_batch", f"must be >= 1, got {r.updates_per_batch}")
        _check(r.reincarnate_at is None or r.reincarnate_at == "auto"
               or (isinstance(r.reincarnate_at, int) and r.reincarnate_at >= 0), "remix.reincarnate_at",
               f"must be a step >= 0, auto or null, got {r.reincarnate_at!r}")
        au = r.auto_reincarnation
        _check(au.min_step >= 0, "remix.auto_reincarnation.min_step", f"must be >= 0, got {au.min_step}")
        _check(au.max_step is None or au.max_step >= au.min_step, "remix.auto_reincarnation.max_step",
               f"must be >= min_step ({au.min_step}) or null, got {au.max_step}")
        for key in ("window", "patience", "baseline_steps"):
            _check(getattr(au, key) >= 1, f"remix.auto_reincarnation.{key}", f"must be >= 1, got {getattr(au, key)}")
        _check(au.ess_below is None or 0 < au.ess_below <= 1, "remix.auto_reincarnation.ess_below",
               f"must be in (0, 1] or null, got {au.ess_below}")
        _check(au.length_drop_above is None or 0 < au.length_drop_above < 1,
               "remix.auto_reincarnation.length_drop_above", f"must be in (0, 1) or null, got {au.length_drop_above}")
        _check(au.kl_precedent_above is None or au.kl_precedent_above > 0, "remix.auto_reincarnation.kl_precedent_above",
               f"must be > 0 or null, got {au.kl_precedent_above}")
        _check(au.plateau_steps is None or au.plateau_steps >= 1, "remix.auto_reincarnation.plateau_steps",
               f"must be >= 1 or null, got {au.plateau_steps}")
        _check(au.plateau_min_gain >= 0, "remix.auto_reincarnation.plateau_min_gain",
               f"must be >= 0, got {au.plateau_min_gain}")
        _check(r.precedent in ("lagged", "proximal"), "remix.precedent", f"must be lagged or proximal, got {r.precedent!r}")
        _check(r.replay in ("uniform", "informative"), "remix.replay", f"must be uniform or informative, got {r.replay!r}")
        _check(0 < r.replay_recency <= 1, "remix.replay_recency", f"must be in (0, 1], got {r.replay_recency}")
        _check(r.max_replays >= 1, "remix.max_replays", f"must be >= 1, got {r.max_replays}")
        _check(r.replay_m2_threshold is None or r.replay_m2_threshold > 0, "remix.replay_m2_threshold",
               f"must be > 0 or null, got {r.replay_m2_threshold}")
        _check(not t.dynamic_sampling or t.samples_per_prompt >= 2, "train.dynamic_sampling",
               "keeps groups whose rewards differ, so it needs train.samples_per_prompt >= 2")
        _check(t.dynamic_sampling_max_rounds >= 1, "train.dynamic_sampling_max_rounds",
               f"must be >= 1, got {t.dynamic_sampling_max_rounds}")
        _check(t.watchdog_seconds is None or t.watchdog_seconds > 0, "train.watchdog_seconds",
               f"must be > 0 seconds or null (no watchdog), got {t.watchdog_seconds}")
        d = self.data
        _check(d.selection in ("none", "skip_uninformative"), "data.selection",
               f"must be none or skip_uninformative, got {d.selection!r}")
        _check(d.selection == "none" or t.samples_per_prompt >= 2, "data.selection",
               "skip_uninformative reads a prompt's group reward variance, so it needs train.samples_per_prompt >= 2")
        _check(0 <= d.selection_skip_base <= d.selection_max_skip < 1, "data.selection_skip_base/max_skip",
               f"need 0 <= skip_base <= max_skip < 1 (a prompt is always revisited), got {d.selection_skip_base} and "
               f"{d.selection_max_skip}")
        _check(d.selection_revisit_after >= 1, "data.selection_revisit_after",
               f"must be >= 1, got {d.selection_revisit_after}")
        _check(0 <= r.kl_convex_floor <= 1, "remix.kl_convex_floor", "must be in [0, 1]")
        _check(r.kl_convex_interval >= 1, "remix.kl_convex_interval", "must be >= 1")
        lora = self.model.lora
        _check(lora.r >= 0, "model.lora.r", f"must be >= 0 (0: full finetuning), got {lora.r}")
        if lora.enabled:
            _check(lora.alpha > 0, "model.lora.alpha", f"must be > 0, got {lora.alpha}")
            _check(0 <= lora.dropout < 1, "model.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
            _check(bool(lora.target_modules), "model.lora.target_modules", "must name at least one module (or all-linear)")
            _check(lora.lr is None or lora.lr > 0, "model.lora.lr", f"must be > 0 or null, got {lora.lr}")
        _check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
        _check(t.prompts_per_step >= 1, "train.prompts_per_step", f"must be >= 1, got {t.prompts_per_step}")
        _check(t.samples_per_prompt >= 1, "train.samples_per_prompt", f"must be >= 1, got {t.samples_per_prompt}")
        if a.name == "grpo":
            _check(t.samples_per_prompt >= 2, "train.samples_per_prompt",
                   "GRPO needs at least 2 samples per prompt (group-normalised advantages)")
        batch = t.prompts_per_step * t.samples_per_prompt
        _check(t.minibatch_size >= 1 and batch % t.minibatch_size == 0, "train.minibatch_size",
               f"must divide the batch of prompts_per_step x samples_per_prompt = {batch} responses, "
               f"got {t.minibatch_size}")
        if r.enabled:
            replayed = replayed_prompts(t.prompts_per_step, r.offpolicy_fraction)
            _check(replayed < t.prompts_per_step, "remix.offpolicy_fraction",
                   f"offpolicy_fraction={r.offpolicy_fraction} with prompts_per_step={t.prompts_per_step} replays "
                   f"{replayed} prompts and generates none; the buffer would never be refilled")
        _check(t.micro_batch_tokens >= 1, "train.micro_batch_tokens", "must be >= 1")
        _check(t.logprob_chunk_tokens is None or t.logprob_chunk_tokens >= 1, "train.logprob_chunk_tokens",
               "must be >= 1 or null")
        _check(t.peak_tflops is None or t.peak_tflops > 0, "train.peak_tflops", "must be > 0 or null")
        _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
        _check(ro.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
        _check(ro.temperature > 0, "rollout.temperature", f"must be > 0, got {ro.temperature}")
        _check(0 < ro.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {ro.top_p}")
        _check(ro.behaviour_logprobs in ("recompute", "engine"), "rollout.behaviour_logprobs",
               "must be recompute or engine")
        _check(ro.engine in ("hf", "vllm"), "rollout.engine", f"must be hf or vllm, got {ro.engine!r}")
        self._validate_sampler_logprobs()
        _check(ro.is_correction in ("none", "tis", "mis"), "rollout.is_correction",
               f"must be none, tis or mis, got {ro.is_correction!r}")
        _check(ro.is_correction == "none" or ro.behaviour_logprobs == "engine", "rollout.is_correction",
               "corrects the engine's log-probs towards the trainer's: set rollout.behaviour_logprobs=engine")
        _check(ro.is_cap > 0, "rollout.is_cap", f"must be > 0, got {ro.is_cap}")
        _check(0 <= ro.max_staleness <= 1, "rollout.max_staleness",
               f"must be 0 or 1 (one-step-off is the deepest pipeline offered), got {ro.max_staleness}")
        _check(not (ro.pipeline and ro.enable_sleep_mode), "rollout.enable_sleep_mode",
               "rollout.pipeline=true generates while the trainer updates, so the vLLM engine cannot sleep meanwhile: "
               "leave enable_sleep_mode unset (null) or false")
        _check(ro.is_level in ("token", "sequence"), "rollout.is_level",
               f"must be token or sequence, got {ro.is_level!r}")
        self._validate_mismatch_mask()
        _check(0 < ro.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization",
               f"must be in (0, 1], got {ro.gpu_memory_utilization}")
        _check(ro.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
        _check(ro.max_model_len is None or ro.max_model_len > ro.max_new_tokens, "rollout.max_model_len",
               f"must exceed rollout.max_new_tokens ({ro.max_new_tokens})")
        _check(ro.kv_cache_gb is None or ro.kv_cache_gb > 0, "rollout.kv_cache_gb", "must be > 0")
        _check(ro.dtype in (None, "float32", "bfloat16", "float16"), "rollout.dtype",
               f"must be float32, bfloat16 or float16, got {ro.dtype!r}")
        _check(self.model.dtype in ("float32", "bfloat16", "auto"), "model.dtype", f"must be float32, bfloat16 or auto, got {self.model.dtype!r}")
        _check(self.model.gradient_checkpointing in (True, False, "auto"), "model.gradient_checkpointing",
               f"must be true, false or auto, got {self.model.gradient_checkpointing!r}")
        _check(self.model.lm_head_dtype in ("float32", "auto"), "model.lm_head_dtype",
               f"must be float32 or auto, got {self.model.lm_head_dtype!r}")
        _check(self.model.frozen_dtype in ("float32", "bfloat16", "auto"), "model.frozen_dtype",
               f"must be float32, bfloat16 or auto, got {self.model.frozen_dtype!r}")
        _check(ro.top_k >= 0, "rollout.top_k", f"must be >= 0 (0 turns it off), got {ro.top_k}")
        _check(ro.max_batch_size >= 1, "rollout.max_batch_size", f"must be >= 1, got {ro.max_batch_size}")
        _check(ro.sync_check_bound is None or ro.sync_check_bound > 0, "rollout.sync_check_bound",
               f"must be > 0 or null, got {ro.sync_check_bound}")
        _check(t.critic_lr > 0, "train.critic_lr", f"must be > 0, got {t.critic_lr}")
        _check(self.data.limit is None or self.data.limit >= 1, "data.limit", f"must be >= 1 or null, got {self.data.limit}")
        rw = self.reward
        _check(rw.timeout > 0, "reward.timeout", f"must be > 0 seconds, got {rw.timeout}")
        _check(rw.custom_timeout is None or rw.custom_timeout > 0, "reward.custom_timeout",
               f"must be > 0 seconds or null, got {rw.custom_timeout}")
        _check(rw.num_workers >= 1, "reward.num_workers", f"must be >= 1, got {rw.num_workers}")
        _check(rw.format_weight >= 0, "reward.format_weight", f"must be >= 0, got {rw.format_weight}")
        _check(self.eval.limit is None or self.eval.limit >= 1, "eval.limit", f"must be >= 1 or null, got {self.eval.limit}")
        _check(self.eval.temperature > 0, "eval.temperature", f"must be > 0, got {self.eval.temperature}")
        _check(rw.grader in ("strict", "paper", "auto"), "reward.grader",
               f"must be strict, paper or auto, got {rw.grader!r}")
        _check(rw.hacking_audit_samples >= 0, "reward.hacking_audit_samples", "must be >= 0")
        _check(rw.hacking_patience >= 1, "reward.hacking_patience", "must be >= 1")
        _check(rw.hacking_min_responses >= 1, "reward.hacking_min_responses", "must be >= 1")
        from remix_rft.rewards.hacking import DEFAULT_THRESHOLDS

        unknown = sorted(set(rw.hacking_thresholds) - set(DEFAULT_THRESHOLDS))
        _check(not unknown, "reward.hacking_thresholds",
               f"unknown signal(s) {unknown}; known: {', '.join(DEFAULT_THRESHOLDS)}")
        _check(self.eval.samples >= 1, "eval.samples", "must be >= 1")
        _check(self.eval.every >= 0, "eval.every", "must be >= 0")
        _check(self.checkpoint.every >= 0 and self.checkpoint.keep >= 1, "checkpoint", "every >= 0 and keep >= 1")
        self._validate_names()
        return self

    def _validate_sampler_logprobs(self) -> None:
        ro = self.rollout
        _check(ro.reuse_sampler_logprobs in (True, False, "auto"), "rollout.reuse_sampler_logprobs",
               f"must be true, false or auto, got {ro.reuse_sampler_logprobs!r}")
        if ro.reuse_sampler_logprobs is True:
            blocker = sampler_logprobs_blocker(self)
            _check(blocker is None, "rollout.reuse_sampler_logprobs", f"true needs the sampler's log-probs to be pi_k's, "
                   f"but {blocker}; set it to auto or false")

    def _validate_mismatch_mask(self) -> None:
        from remix_rft.algos.is_correction import MISMATCH_MASKS, mask_bounds

        ro = self.rollout
        _check(ro.mismatch_mask in MISMATCH_MASKS, "rollout.mismatch_mask",
               f"must be {', '.join(MISMATCH_MASKS[:-1])} or {MISMATCH_MASKS[-1]}, got {ro.mismatch_mask!r}")
        for key in ("mismatch_mask_low", "mismatch_mask_high"):
            value = getattr(ro, key)
            _check(value is None or (isinstance(value, (int, float)) and value > 0), f"rollout.{key}",
                   f"must be > 0 or null, got {value!r}")
        if ro.mismatch_mask == "none":
            _check(ro.mismatch_mask_low is None and ro.mismatch_mask_high is None, "rollout.mismatch_mask",
                   "mismatch_mask_low / _high are set but no mask is: set rollout.mismatch_mask=geo_mean or icepop")
            return
        _check(ro.behaviour_logprobs == "engine", "rollout.mismatch_mask",
               "compares the engine's log-probs with the trainer's: set rollout.behaviour_logprobs=engine")
        try:
            mask_bounds(ro.mismatch_mask, ro.mismatch_mask_low, ro.mismatch_mask_high)
        except ValueError as err:
            raise ConfigError(f"config key 'rollout.mismatch_mask_low/high': {err}") from None

    def _validate_names(self) -> None:
        """Names looked up in registries and data-source options, checked here so a typo fails at start and not
        after the model has loaded or at the first update."""
        from remix_rft.algos.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
        from remix_rft.data.loaders import check_source_options

        a = self.algorithm
        _check(a.policy_loss in POLICY_LOSSES, "algorithm.policy_loss",
               f"unknown policy loss {a.policy_loss!r} (registered: {', '.join(sorted(POLICY_LOSSES))}; register "
               "your own with remix_rft.algos.register_policy_loss before loading the config)")
        _check(self.advantage_estimator in ADVANTAGE_ESTIMATORS, "algorithm.advantage_estimator",
               f"unknown estimator {self.advantage_estimator!r} (registered: {', '.join(sorted(ADVANTAGE_ESTIMATORS))})")
        _check(self.reward.name in ("math", "custom") or ":" in self.reward.name, "reward.name",
               f"unknown reward {self.reward.name!r}: use math, custom (with reward.custom) or package.module:function")
        _check(self.reward.name != "custom" or bool(self.reward.custom), "reward.custom",
               "reward.name=custom needs reward.custom=package.module:function")
        _check(self.rollout.engine in ROLLOUT_ENGINES, "rollout.engine",
               f"unknown engine {self.rollout.engine!r} (known: {', '.join(ROLLOUT_ENGINES)})")
        try:
            check_source_options(self.data.train, self.data.train_options)
        except DataError as err:
            raise ConfigError(f"config key 'data.train_options': {err}. Set data.train_options={{}} or options "
                              f"that data.train={self.data.train!r} takes") from None
        for name, options in self.eval.options.items():
            try:
                check_source_options(name, options)
            except DataError as err:
                raise ConfigError(f"config key 'eval.options.{name}': {err}") from None


def replayed_prompts(prompts_per_step: int, offpolicy_fraction: float) -> int:
    """Prompt groups a mix-phase step replays: round_half_up(p x prompts_per_step), whole groups. Python's round() is
    banker's; the epsilon absorbs float noise such as 0.1 x 25. The schedule (schedule.py) plans steps with it."""
    return math.floor(offpolicy_fraction * prompts_per_step + 0.5 + 1e-9)


def sampler_logprobs_blocker(config: Config) -> str | None:
    """Why the rollout engine's log-probs of this step's fresh responses cannot stand in for pi_k's (None: they
    can): another engine's kernels, a truncated distribution, a pipelined snapshot, or engine mode's correction."""
    ro = config.rollout
    if ro.engine != "hf":
        return f"rollout.engine={ro.engine} computes them with its own kernels"
    if ro.behaviour_logprobs != "recompute":
        return "rollout.behaviour_logprobs=engine corrects the sampler's log-probs towards the trainer's pass"
    if ro.top_p < 1 or ro.top_k > 0:
        return "top-p / top-k truncation needs the trainer's pass to find the tokens outside pi_k's own set"
    if ro.pipeline:
        return "rollout.pipeline samples with a snapshot one version behind"
    return None


def reuses_sampler_logprobs(config: Config) -> tuple[bool, str]:
    """(on, why) for `rollout.reuse_sampler_logprobs` before the first step's check (trainer)."""
    setting = config.rollout.reuse_sampler_logprobs
    if setting is False:
        return False, "rollout.reuse_sampler_logprobs=false"
    blocker = sampler_logprobs_blocker(config)
    if blocker is not None:
        return False, blocker
    if setting == "auto" and config.model.bf16:
        return False, "bf16 autocast: the sampler's and the trainer's kernels round differently (auto: float32 only)"
    return True, f"rollout.reuse_sampler_logprobs={str(setting).lower()}: the HF sampler's log-probs are pi_k's"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


# ----------------------------------------------------------------------------------------------------------------
# building a Config from dicts, YAML files and overrides (the generic parsing is in config_parsing.py)


def config_from_dict(data: dict[str, Any]) -> Config:
    return build_dataclass(Config, data).validate()


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Merge `key.sub=value` overrides into a config dict (a file's, or a run's config.yaml on resume).

    `data.train_options` belong to the source they were written for (the arithmetic generator's digits, ...): an
    override that switches `data.train` to another source drops the base's options; options given in the overrides
    apply to the new source. So `remix-rft train data.train=my.jsonl` works on any config.
    """
    parsed = [parse_override(text) for text in overrides]
    base_data = data.get("data") if isinstance(data.get("data"), dict) else {}
    new_sources = [p["data"]["train"] for p in parsed if isinstance(p.get("data"), dict) and "train" in p["data"]]
    old_source = base_data.get("train", DataConfig.train)
    if new_sources and new_sources[-1] != old_source and base_data.get("train_options"):
        logger.info("data.train switched from %r to %r: dropping the data.train_options written for %r (%s)",
                    old_source, new_sources[-1], old_source, base_data["train_options"])
        data = {**data, "data": {k: v for k, v in base_data.items() if k != "train_options"}}
    for update in parsed:
        data = deep_merge(data, update)
    return data


BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a built-in config (`remix-grpo`, `grpo`, `ppo`, `remix-ppo`, ...)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    builtin = BUILTIN_CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if builtin.exists():
        return builtin
    known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file '{name_or_path}' not found: give a YAML path or a built-in config ({known})")


def config_for_resume(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with, as a dict (overrides are merged on top by the CLI)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise PathNotFoundError(f"{path} not found: is {run_dir} a remix-rft run directory?")
    return load_yaml(path)


def load_config(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (optional) <- `key.sub=value` overrides, then validated."""
    data: dict[str, Any] = {}
    if config is not None:
        path = resolve_config_path(str(config))
        data = load_yaml(path)
        try:
            build_dataclass(Config, data)  # report unknown keys against the file before overrides are mixed in
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return config_from_dict(apply_overrides(data, overrides))
