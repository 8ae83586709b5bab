"""Hugging Face TRL's `GRPOTrainer` as the outside baseline of the efficiency study.

It trains the same model on the same prompts, with the same reward and batch shape as our trainer's plain GRPO,
and writes the run directory in our format (`config.yaml`, `metrics.jsonl`, `eval/step_N/`), so `remix-rft plot`
overlays it on our runs. ReMix settings in the config are ignored: TRL runs plain on-policy GRPO, and the written
`config.yaml` says so (`remix.enabled: false`). `trl_config.yaml` holds the GRPOConfig values this module set.

    python benchmarks/trl_baseline.py --config grpo train.steps=20 --run-dir runs/trl-grpo

Mapping (one of OUR steps = one TRL generation batch):
    our config                          -> TRL GRPOConfig
    train.samples_per_prompt            -> num_generations
    train.minibatch_size                -> per_device_train_batch_size (gradient_accumulation_steps = 1)
    prompts_per_step x samples / mini   -> steps_per_generation (optimizer steps per generation batch)
    (one update pass)                   -> num_iterations = 1
    train.steps                         -> max_steps = train.steps x steps_per_generation (optimizer steps)
    train.lr / weight_decay / max_grad_norm / seed -> learning_rate / weight_decay / max_grad_norm / seed
    train.warmup_steps                  -> constant lr (lr_scheduler_type="constant"); with warmup,
                                           "constant_with_warmup" over warmup_steps x steps_per_generation
    algorithm.kl_coef / clip_eps        -> beta / epsilon (epsilon_high = epsilon), k3 KL as a loss term
    algorithm.entropy_coef              -> entropy_coef
    algorithm.loss_agg token-mean       -> loss_type="bnpo": token mean over the optimizer step's minibatch,
                                           exactly ours ("dapo" divides by the generation batch's mean minibatch
                                           token count instead); seq-mean-token-mean -> "grpo";
                                           seq-mean-token-sum-norm -> "dr_grpo"
    advantage estimator grpo / drgrpo   -> scale_rewards="group" / "none"
    rollout.temperature / top_p / top_k -> temperature / top_p / top_k
    rollout.max_new_tokens              -> max_completion_length
    model.dtype / autocast_bf16         -> bf16 (accelerate's bf16 autocast, on CPU here; use_cpu=True), float32 weights
    model.gradient_checkpointing        -> gradient_checkpointing (TRL's default is True); auto is decided as our
                                           trainer decides it (remix_rft.plan.gradient_checkpointing_for_run)

Prompts: our `load_examples` + `format_prompt` text, given to TRL as plain strings, in exactly the order our
`PromptSampler` draws them (the dataset is laid out step by step and TRL's shuffling is off). The reward is our
`reward_from_config(config.reward)` called on TRL's decoded completions with our `Example`s (looked up by an `example_index`
column; the string `answer` column is checked against them). Train lines are assembled by a TrainerCallback from
what the reward function saw (rewards, correctness, TRL's completion token ids) and TRL's per-optimizer-step logs
(kl, entropy, grad norm; all of TRL's logs are also kept as `trl/<key>`, averaged over the step's optimizer
steps); evaluations run our `evaluate` on the model TRL is training. `time/step` runs from the generation to the
step's last optimizer step (evaluations excluded); `time/generation` is TRL's prompt tokenization + `generate` +
decoding; `memory/peak_rss_mb` is the process's peak RSS so far.

Differences that remain (TRL 1.16, by construction): advantages divide by (group std + 1e-4), ours + grpo_eps;
TRL samples with `model.generate` (another RNG stream than our engine: same distribution, other samples); the
minibatch split of a generation batch uses another permutation; TRL's `kl` and `entropy` are measured during the
updates on each minibatch (ours: once over the whole batch, on pi_k before any update) and averaged here; TRL
never skips a non-finite update; transformers' AdamW exempts biases and norm weights from weight decay;
warmup counts optimizer steps. With a ReMix config (e.g. quickstart) every step generates the full
prompts_per_step x samples_per_prompt responses, as our plain GRPO does, not ReMix's (1-p) share.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from remix_rft.config import Config, ConfigError, load_config
from remix_rft.data import format_prompt, load_train_examples
from remix_rft.data.sampler import PromptSampler
from remix_rft.data.types import Example
from remix_rft.evaluation import EvalReport, build_eval_sets, evaluate, report_before_after
from remix_rft.metrics import MetricsLogger, peak_rss_mb
from remix_rft.models import load_model, load_tokenizer
from remix_rft.rewards import GRADING_PROBLEMS, reward_from_config, summarise_scores
from remix_rft.rewards.base import RewardFunction
from remix_rft.rollout import SamplingParams, build_engine

logger = logging.getLogger("trl_baseline")

LOSS_TYPES = {"token-mean": "bnpo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}
REWARD_SCALING = {"grpo": "group", "drgrpo": "none", "dr_grpo": "none"}
# TRL's per-optimizer-step log keys that have the same meaning as ours (averaged over our step's optimizer steps)
SHARED_LOG_KEYS = {"kl": "kl/base", "entropy": "entropy", "grad_norm": "grad_norm"}


# ---------------------------------------------------------------------------------------------------- the mapping
def steps_per_generation(config: Config) -> int:
    """Optimizer steps per generation batch: our batch of responses over our minibatch size."""
    batch = config.train.prompts_per_step * config.train.samples_per_prompt
    return batch // config.train.minibatch_size


def trl_gradient_checkpointing(config: Config) -> bool:
    """Ours as a bool: `auto` decided as our trainer decides it (the same model, longest prompt and memory)."""
    from remix_rft.data.sampler import TrainingPrompts
    from remix_rft.memory import memory_at_hand
    from remix_rft.plan import gradient_checkpointing_for_run, resolve_architecture

    if config.model.gradient_checkpointing != "auto":
        return bool(config.model.gradient_checkpointing)
    prompts = TrainingPrompts(config, load_tokenizer(config.model.name))
    return gradient_checkpointing_for_run(config, lambda: resolve_architecture(config.model.name),
                                          prompts.longest_prompt_tokens, memory_at_hand("cpu"), "cpu")[0]


def grpo_config_values(config: Config, output_dir: Path) -> dict[str, Any]:
    """The GRPOConfig keyword arguments that reproduce our plain GRPO step (see the module docstring)."""
    alg, train, rollout = config.algorithm, config.train, config.rollout
    if alg.name != "grpo" or config.advantage_estimator not in REWARD_SCALING:
        raise ConfigError(f"config key 'algorithm.name': the TRL baseline runs GRPO only (group advantages), got "
                          f"algorithm.name={alg.name!r} with advantage estimator {config.advantage_estimator!r}")
    if alg.policy_loss != "mix_ppg":
        raise ConfigError(f"config key 'algorithm.policy_loss': TRL has the PPO/GRPO clipped loss only (our mix_ppg "
                          f"on fresh data), got {alg.policy_loss!r}")
    if alg.kl_coef > 0 and (alg.kl_in_reward or alg.kl_estimator not in ("k3", "low_var_kl")):
        raise ConfigError("config key 'algorithm.kl_estimator': TRL's GRPO KL is the k3 estimator as a loss term; "
                          f"got kl_estimator={alg.kl_estimator!r}, kl_in_reward={alg.kl_in_reward}")
    loss_type = LOSS_TYPES[alg.loss_agg]
    if loss_type == "dr_grpo" and alg.loss_norm_len not in (None, rollout.max_new_tokens):
        raise ConfigError("config key 'algorithm.loss_norm_len': TRL's dr_grpo divides by max_completion_length "
                          f"({rollout.max_new_tokens}), got {alg.loss_norm_len}")
    per_generation = steps_per_generation(config)
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "bf16": config.model.bf16,
        "fp16": False,
        "gradient_checkpointing": trl_gradient_checkpointing(config),
        "per_device_train_batch_size": train.minibatch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": per_generation,
        "num_generations": train.samples_per_prompt,
        "num_iterations": 1,
        "max_steps": train.steps * per_generation,
        "learning_rate": train.lr,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "lr_scheduler_type": "constant_with_warmup" if train.warmup_steps > 0 else "constant",
        "warmup_steps": train.warmup_steps * per_generation,
        "seed": train.seed,
        "data_seed": train.seed,
        "beta": alg.kl_coef,
        "epsilon": alg.clip_eps,
        "entropy_coef": alg.entropy_coef,
        "loss_type": loss_type,
        "scale_rewards": REWARD_SCALING[config.advantage_estimator],
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "top_k": rollout.top_k,
        "max_completion_length": rollout.max_new_tokens,
        "shuffle_dataset": False,  # the dataset is already in our sampler's order
        "remove_unused_columns": False,  # the reward needs the example_index / answer columns
        "use_vllm": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": not config.logging.progress,
        "dataloader_num_workers": 0,
        "log_completions": False,
    }
    return values


def baseline_config(config: Config) -> Config:
    """The config of what actually runs: plain on-policy GRPO (no replay, no reincarnation)."""
    effective = copy.deepcopy(config)
    effective.remix.enabled = False
    effective.remix.reincarnate_at = None
    return effective.validate()


# ---------------------------------------------------------------------------------------------------- data
def answer_text(example: Example) -> str:
    return str(example.answer)


def prompt_order(config: Config, num_examples: int) -> list[int]:
    """Example indices in the order our trainer's PromptSampler draws them, prompts_per_step at a time."""
    sampler = PromptSampler(num_examples, config.train.seed)
    return [index for _ in range(config.train.steps) for index in sampler.next(config.train.prompts_per_step)]


def build_prompt_dataset(config: Config, tokenizer: Any, examples: list[Example]):
    """A `datasets.Dataset` with one row per prompt drawn in training: plain-text `prompt` (our format_prompt),
    `answer` (string) and `example_index` (into `examples`, for the grader)."""
    from datasets import Dataset

    cache: dict[int, str] = {}
    rows: dict[str, list] = {"prompt": [], "answer": [], "example_index": []}
    for index in prompt_order(config, len(examples)):
        if index not in cache:
            cache[index] = format_prompt(tokenizer, examples[index].problem, instruction=config.data.instruction,
                                         system_prompt=config.data.system_prompt)
        rows["prompt"].append(cache[index])
        rows["answer"].append(answer_text(examples[index]))
        rows["example_index"].append(index)
    first = rows["prompt"][0]
    # TRL tokenizes plain prompts with the tokenizer's special tokens; our engine adds none
    if tokenizer(text=[first])["input_ids"][0] != tokenizer([first], add_special_tokens=False)["input_ids"][0]:
        logger.warning("the tokenizer adds special tokens to plain prompts: TRL's prompt token ids differ from ours")
    return Dataset.from_dict(rows)


# ---------------------------------------------------------------------------------------------------- reward
@dataclass
class GenerationBatch:
    """What the reward function saw of one generation batch (one of our steps)."""

    rewards: list[float] = field(default_factory=list)
    scores: list = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    scoring_started: float = 0.0
    scoring_seconds: float = 0.0


class TRLReward:
    """Our reward as a TRL reward function: `fn(prompts, completions, answer, **columns) -> list[float]`.

    It grades with our grader against our `Example`s and keeps each batch's scores and completion token counts
    for the train line (TRL calls it once per generation batch, with the whole batch).
    """

    def __init__(self, reward: RewardFunction, examples: list[Example]):
        self.__name__ = "remix_rft_reward"  # TRL names reward functions by __name__ in its logs
        self.reward = reward
        self.examples = examples
        self.eos_token_ids: set[int] = set()  # set once the trainer has resolved them
        self.batches: list[GenerationBatch] = []

    def __call__(self, prompts: list[str], completions: list[str], answer: list[str],
                 example_index: list[int], completion_ids: list[list[int]], **_: Any) -> list[float]:
        batch = GenerationBatch(scoring_started=time.perf_counter())
        examples = [self.examples[i] for i in example_index]
        for row, (example, text) in enumerate(zip(examples, answer)):
            if answer_text(example) != text:
                raise ValueError(f"reward row {row}: answer column {text!r} does not match example "
                                 f"{example.id!r} ({example.answer!r})")
        scores = self.reward.score(list(completions), examples)
        batch.scores = scores
        batch.rewards = [float(s.reward) for s in scores]
        batch.lengths = [len(ids) for ids in completion_ids]
        batch.truncated = [not ids or ids[-1] not in self.eos_token_ids for ids in completion_ids]
        batch.scoring_seconds = time.perf_counter() - batch.scoring_started
        self.batches.append(batch)
        return batch.rewards


# ---------------------------------------------------------------------------------------------------- logging
class BaselineRun:
    """Our-format bookkeeping for a TRL run: train lines per generation batch, evaluations, totals."""

    def __init__(self, config: Config, run_dir: Path, model: torch.nn.Module, tokenizer: Any,
                 reward: RewardFunction, reward_fn: TRLReward):
        self.config = config
        self.run_dir = run_dir
        self.tokenizer = tokenizer
        self.reward = reward
        self.reward_fn = reward_fn
        self.per_generation = steps_per_generation(config)
        self.engine = build_engine(config.rollout.engine, model, tokenizer,
                                   max_batch_size=config.rollout.max_batch_size,
                                   autocast_bf16=config.model.bf16)
        self.metrics = MetricsLogger(run_dir, tensorboard=config.logging.tensorboard,
                                     wandb_project=config.logging.wandb_project if config.logging.wandb else None,
                                     run_name=run_dir.name, config=config.to_dict())
        self.eval_sets = build_eval_sets(config) if config.eval.benchmarks else {}
        self.step = 0
        self.rollouts_total = 0
        self.tokens_total = 0
        self.step_started = 0.0
        self.step_ended = 0.0
        self.trl_logs: list[dict[str, float]] = []
        self.eval_history: list[tuple[int, EvalReport]] = []

    def evaluate(self, step: int) -> EvalReport:
        cfg = self.config.eval
        sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens or self.config.rollout.max_new_tokens,
                                  temperature=cfg.temperature, greedy=cfg.greedy,
                                  seed=self.config.train.seed * 7919 + step)
        report = evaluate(self.engine, self.tokenizer, self.eval_sets, self.reward, sampling, samples=cfg.samples,
                          instruction=self.config.data.instruction, progress=False,
                          system_prompt=self.config.data.system_prompt)
        record = {"type": "eval", "step": step, "rollouts/total": self.rollouts_total,
                  "tokens/total": self.tokens_total}
        record.update(report.metrics(prefix="eval"))
        self.metrics.log(record)
        self.eval_history.append((step, report))
        report.write(self.run_dir / "eval" / f"step_{step:06d}")
        return report

    def finish_step(self) -> dict[str, Any]:
        """The train line of the generation batch whose last optimizer step was just logged."""
        if len(self.reward_fn.batches) != 1:
            raise RuntimeError(f"expected one scored generation batch per step, got {len(self.reward_fn.batches)} "
                               f"(TRL's steps_per_generation no longer matches ours?)")
        batch = self.reward_fn.batches.pop()
        self.step += 1
        count = len(batch.rewards)
        tokens = sum(batch.lengths)
        self.rollouts_total += count
        self.tokens_total += tokens
        summary = summarise_scores(batch.scores)
        record: dict[str, Any] = {
            "type": "train", "step": self.step, "phase": "on-policy",
            "rollouts/step": count, "rollouts/total": self.rollouts_total, "rollouts/replayed": 0,
            "tokens/step": tokens, "tokens/total": self.tokens_total,
            "reward/mean": float(np.mean(batch.rewards)),
            "accuracy/train": summary["accuracy"],
            "response_length/mean": float(np.mean(batch.lengths)),
            "response_length/max": float(max(batch.lengths)),
            "response_length/truncated_share": float(np.mean(batch.truncated)),
            "offpolicy_fraction": 0.0, "updates_per_batch": 1, "optimizer_steps": len(self.trl_logs),
        }
        record.update({f"verifier/{k}": summary[k] for k in GRADING_PROBLEMS})
        if self.trl_logs:
            record["lr"] = self.trl_logs[-1].get("learning_rate", float("nan"))
        values: dict[str, list[float]] = defaultdict(list)
        for logs in self.trl_logs:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    values[key].append(float(value))
        for key, series in values.items():
            mean = float(np.mean(series))
            record[f"trl/{key}"] = mean  # TRL's own metrics, averaged over the step's optimizer steps
            if key in SHARED_LOG_KEYS:
                record[SHARED_LOG_KEYS[key]] = mean
        record["time/generation"] = batch.scoring_started - self.step_started
        record["time/scoring"] = batch.scoring_seconds
        record["time/step"] = self.step_ended - self.step_started
        record["memory/peak_rss_mb"] = peak_rss_mb()
        self.trl_logs = []
        self.metrics.log(record)
        return record

    def close(self) -> None:
        self.metrics.close()


def make_callback(run: BaselineRun):
    """A TrainerCallback that times each generation batch and writes its train line (and evaluations)."""
    from transformers import TrainerCallback

    class OurFormatCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % run.per_generation == 0:  # this optimizer step generates a new batch
                run.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            run.step_ended = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            run.trl_logs.append(dict(logs))
            if state.global_step % run.per_generation:
                return
            record = run.finish_step()
            cfg = run.config
            print(f"[trl-grpo] step {record['step']}/{cfg.train.steps} reward {record['reward/mean']:.3f} "
                  f"acc {record['accuracy/train']:.3f} len {record['response_length/mean']:.0f} "
                  f"rollouts {record['rollouts/total']} kl {record.get('kl/base', 0.0):.4f} "
                  f"{record['time/step']:.1f}s", flush=True)
            if cfg.eval.every and record["step"] % cfg.eval.every == 0 and record["step"] != cfg.train.steps \
                    and cfg.eval.benchmarks:
                run.evaluate(record["step"])

    return OurFormatCallback()


# ---------------------------------------------------------------------------------------------------- the run
def run_trl_grpo(config: Config, run_dir: Path) -> Path:
    """Train `config`'s model with TRL's GRPOTrainer on our data, reward and batch shape; returns `run_dir`."""
    import transformers
    import trl
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    config = baseline_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = config.train.seed
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    tokenizer = load_tokenizer(config.model.name)
    model = load_model(config.model.name, dtype="float32")  # float32 masters, bf16 by autocast: as our trainer
    model.train()
    reward = reward_from_config(config.reward)
    examples = load_train_examples(config)
    dataset = build_prompt_dataset(config, tokenizer, examples)
    reward_fn = TRLReward(reward, examples)

    values = grpo_config_values(config, run_dir / "trl_output")
    args = GRPOConfig(**values)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    (run_dir / "trl_config.yaml").write_text(yaml.safe_dump({
        "versions": {"trl": str(trl.__version__), "transformers": str(transformers.__version__),
                     "torch": str(torch.__version__)},
        "grpo_config": {**values, "generation_batch_size": args.generation_batch_size},
        "prompt_order": "our PromptSampler's, laid out step by step (TRL's shuffle off)",
    }, sort_keys=False))

    run = BaselineRun(config, run_dir, model, tokenizer, reward, reward_fn)
    try:
        trainer = _build_trainer(GRPOTrainer, args, model, tokenizer, reward_fn, dataset,
                                 make_callback(run))
        reward_fn.eos_token_ids = set(trainer.eos_token_ids)
        # our callback prints one summary line a step; transformers' printers would dump every raw log dict
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if config.eval.before_training and config.eval.benchmarks:
            run.evaluate(0)
        trainer.train()
        if run.step != config.train.steps:
            raise RuntimeError(f"TRL ran {run.step} of our steps, expected {config.train.steps}")
        if config.eval.after_training and config.eval.benchmarks:
            run.evaluate(run.step)
        report_before_after(run.eval_history, run_dir, run.rollouts_total)  # as our run_training does
    finally:
        run.close()
        output_dir = Path(values["output_dir"])
        if output_dir.is_dir() and not any(output_dir.iterdir()):  # save_strategy="no" leaves it empty
            output_dir.rmdir()
        close = getattr(reward, "close", None)
        if close is not None:
            close()
    return run_dir


def _build_trainer(trainer_class, args, model, tokenizer, reward_fn, dataset, callback):
    """GRPOTrainer builds its KL reference by re-loading the policy from `config._name_or_path`; a model built in
    memory (tiny-random) has none, so its initial weights are written to a temporary folder for that one load."""
    name_or_path = model.config._name_or_path
    if args.beta == 0 or (name_or_path and Path(name_or_path).is_dir()):
        return trainer_class(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[callback])
    with tempfile.TemporaryDirectory(prefix="trl-reference-") as folder:
        model.save_pretrained(folder)
        model.config._name_or_path = folder
        try:
            return trainer_class(model=model, reward_funcs=reward_fn, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[callback])
        finally:
            model.config._name_or_path = name_or_path


def default_run_dir(config: Config) -> Path:
    name = config.logging.run_name or f"trl-grpo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(config.logging.output_dir) / name


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="TRL GRPOTrainer baseline on our data, reward and batch shape")
    parser.add_argument("--config", "-c", default="quickstart",
                        help="YAML file or built-in config name (default: quickstart, as `remix-rft train`)")
    parser.add_argument("--run-dir", default=None, help="run directory (default: logging.output_dir/trl-grpo-<time>)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config)
        grpo_config_values(config, run_dir)  # reject what TRL cannot run before loading anything
    except (ConfigError, FileNotFoundError) as err:
        print(f"trl_baseline: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    run_trl_grpo(config, run_dir)
    print(f"run directory: {run_dir} ({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
