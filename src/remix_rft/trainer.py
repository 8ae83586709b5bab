"""The ReMix trainer: GRPO / PPO, with or without ReMix, in one code path; this file orchestrates the roles.

One training step (`Trainer.train_step`), top to bottom:
  1. plan the step (phase, off-policy fraction, updates per batch, KL-Convex weight); reincarnate if due
  2. generate fresh responses for (1-p) of the prompts (all of them on-policy), score them
  3. draw replayed groups from the buffer (rollouts of the last N policies)
  4. log-prob passes without grad: pi_k (clip centres / proximal), base reference, precedent (lagged) policy
  5. advantages: GRPO keeps each group's advantage from generation time; PPO runs GAE with the current critic
  6. `updates_per_batch` passes of minibatch updates on the METHOD.md objective; critic updates (PPO)
  7. push the fresh groups to the buffer; the lagged policy now holds pi_k for the next step's precedent KL
With ReMix disabled the same code runs with p = 0, one update pass and no reincarnation: plain GRPO / PPO.

Roles: `actor` (policy, optimizer, Mix-PPG update), `critic`, `references` (base, precedent), `experience` (groups,
batch, log-prob passes, advantages), rollout engine, reward, `buffer`, `data.sampler`, `checkpoint` (whole state).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from remix_rft import checkpoint, experience
from remix_rft.actor import Actor
from remix_rft.buffer import ReplayBuffer
from remix_rft.checkpoint import TrainingState, TrainState, latest_checkpoint
from remix_rft.config import Config, load_yaml
from remix_rft.critic import Critic
from remix_rft.data.sampler import PromptSampler, TrainingPrompts
from remix_rft.data.types import Example
from remix_rft.errors import ConfigError, PathNotFoundError
from remix_rft.evaluation import (
    build_eval_sets,
    comparison_table,
    evaluate,
    pass_at_1_by_benchmark,
    report_before_after,
)
from remix_rft.metrics import MetricsLogger, peak_memory_mb, peak_rss_mb, step_summary, truncate_metrics_after
from remix_rft.models import autocast_context, load_model, load_tokenizer
from remix_rft.perf import StepWork, peak_flops_per_s, throughput_metrics
from remix_rft.references import FrozenReferences
from remix_rft.rewards import build_reward
from remix_rft.rewards.hacking import build_hacking_monitor
from remix_rft.rollout import SamplingParams, build_engine, engine_options
from remix_rft.schedule import StepPlan, build_schedule

__all__ = ["PromptSampler", "TrainState", "Trainer", "comparison_table", "config_for_resume", "peak_rss_mb",
           "report_before_after", "run_training"]

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'model.device': unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'model.device': {name!r} but no CUDA GPU is visible; use model.device=auto or cpu")
    return device


class Trainer:
    """Builds every role from a Config and runs `train()`; see the module docstring for one step."""

    def __init__(self, config: Config, run_dir: Path | None = None, resume_from: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None):
        cfg = self.config = config
        self.on_step_end = on_step_end
        self.device = resolve_device(cfg.model.device)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        torch.manual_seed(cfg.train.seed)
        # input first: a wrong model name, data file or benchmark fails in seconds, before a run dir is written
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.prompts = TrainingPrompts(cfg, self.tokenizer)
        self._eval_sets: dict[str, list[Example]] | None = None
        if cfg.eval.benchmarks and (cfg.eval.before_training or cfg.eval.after_training or cfg.eval.every):
            self.eval_sets()
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

        self.pad_id = self.tokenizer.pad_token_id
        # float32 master weights whatever model.dtype says: bf16 runs as autocast, so AdamW's small updates are not
        # rounded away (at lr 1e-6 most are below half a bf16 ulp); frozen copies take the compute dtype
        policy = load_model(cfg.model.name, dtype="float32").to(self.device)
        policy.train()
        if cfg.model.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        self.references = FrozenReferences(policy, cfg)
        self.critic = Critic(policy, cfg, self.device) if cfg.algorithm.name == "ppo" else None
        self.actor = Actor(policy, cfg)
        self.engine = build_engine(cfg.rollout.engine, policy, self.tokenizer, **engine_options(cfg))
        self._engine_weights_step: int | None = 0  # the step whose weights the engine holds (built from step 0's)
        self._peak_flops: float | None = None  # measured on first use (perf/mfu)
        self.reward = build_reward(cfg.reward.name, format_weight=cfg.reward.format_weight, timeout=cfg.reward.timeout,
                                   correct_reward=cfg.reward.correct_reward,
                                   incorrect_reward=cfg.reward.incorrect_reward,
                                   require_boxed=cfg.reward.require_boxed, num_workers=cfg.reward.num_workers,
                                   custom=cfg.reward.custom, grader=cfg.reward.grader)
        self.hacking = build_hacking_monitor(cfg.reward, self.reward, seed=cfg.train.seed)
        self.stop_reason: str | None = None  # set when the reward-hacking alarm ends the run
        self.schedule = build_schedule(cfg)
        self.buffer = ReplayBuffer(cfg.remix.history_window, seed=cfg.train.seed)
        self.state = TrainState()
        self.eval_history: list[tuple[int, Any]] = []

        if resume_from is not None:
            self.state = checkpoint.read_training_state(resume_from, self._training_state(),
                                                     dtype=cfg.model.compute_dtype)
            dropped = truncate_metrics_after(self.run_dir / "metrics.jsonl", self.state.step)
            if dropped:
                logger.info("dropped %d metric lines logged after the checkpoint at step %d", dropped, self.state.step)
        self.metrics = MetricsLogger(self.run_dir, tensorboard=cfg.logging.tensorboard,
                                     wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
                                     run_name=self.run_dir.name, config=cfg.to_dict(), resume=resume_from is not None)

    @property
    def policy(self) -> torch.nn.Module:
        return self.actor.model

    def _new_run_dir(self) -> Path:
        name = self.config.logging.run_name
        if not name:
            kind = ("remix-" if self.config.remix.enabled else "") + self.config.algorithm.name
            name = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        return Path(self.config.logging.output_dir) / name

    def _autocast(self):
        return autocast_context(self.device, self.config.model.bf16)

    def _sampling(self, step: int) -> SamplingParams:
        ro = self.config.rollout
        return SamplingParams(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, seed=self.config.train.seed * 1_000_003 + step)

    def _training_state(self) -> TrainingState:
        return TrainingState(state=self.state, actor=self.actor, critic=self.critic, references=self.references,
                             buffer=self.buffer, prompts=self.prompts, tokenizer=self.tokenizer, hacking=self.hacking)

    # ------------------------------------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, Any]:
        cfg = self.config
        times: dict[str, float] = {}
        step_start = time.perf_counter()

        # 1. plan; reincarnate: the current policy becomes the KL base and training goes on-policy
        plan: StepPlan = self.schedule.plan(step)
        if plan.reincarnate and not self.state.reincarnated:
            self._reincarnate(step)

        # 2. fresh responses for the step's fresh prompts, scored
        self.buffer.evict(step)
        indices = self.prompts.next(plan.fresh_prompts)
        examples = self.prompts.examples
        t0 = time.perf_counter()
        self._sync_engine()
        times["weight_sync"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rollouts = self.engine.generate([self.prompts.prompt(i) for i in indices], cfg.train.samples_per_prompt,
                                        self._sampling(step))
        times["generation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = self.reward.score([r.text for r in rollouts], [examples[indices[r.prompt_index]] for r in rollouts])
        times["scoring"] = time.perf_counter() - t0
        fresh_groups = experience.make_groups(cfg, step, indices, examples, rollouts, scores)

        # 3. replayed groups: whole prompt groups from the last `history_window` policies
        replay_count = min(plan.replay_prompts, len(self.buffer))
        replay_groups = self.buffer.sample(replay_count) if replay_count else []
        batch = experience.assemble(fresh_groups, replay_groups, self.pad_id, self.device)

        # 4. log-prob passes without grad
        t0 = time.perf_counter()
        pass_metrics = experience.logprob_passes(cfg, batch, plan, self.policy, self.references,
                                      self.critic.model if self.critic else None)
        times["logprobs"] = time.perf_counter() - t0
        if cfg.rollout.behaviour_logprobs == "recompute":
            # when replayed, these groups must carry the behaviour log-probs they were trained with as fresh data
            experience.store_behaviour(fresh_groups, batch.behaviour_logp)
        else:  # keep the engine's (true behaviour) log-probs, and the trainer's for the mismatch correction
            experience.store_behaviour(fresh_groups, batch.proximal_logp, "trainer_logprobs")

        # 5. advantages
        experience.compute_advantages(cfg, batch, plan)

        # pi_{k-1} was only needed for this step's precedent log-probs, computed above; from here on the lagged
        # policy holds pi_k, the precedent of the next step
        self.references.advance_precedent(self.policy)

        # 6. updates
        t0 = time.perf_counter()
        update_metrics = self.actor.update(batch, plan, step)
        if self.critic is not None:
            update_metrics.update(self.critic.update(batch, plan, step))
        times["update"] = time.perf_counter() - t0

        # 7. the fresh groups join the buffer as generated by pi_k (version = step)
        if cfg.remix.enabled and plan.phase == "mix":
            self.buffer.add(fresh_groups)

        generated_tokens = sum(len(r.response_ids) for r in rollouts)
        self.state.step = step
        self.state.rollouts_total += len(rollouts)
        self.state.tokens_total += generated_tokens
        times["step"] = time.perf_counter() - step_start

        record = experience.step_record(step, plan, rollouts, scores, batch, replay_groups, self.state)
        record.update({"buffer/groups": len(self.buffer), "lr": self.actor.lr, **pass_metrics, **update_metrics})
        record.update(self.hacking.observe_step(step, [r.text for r in rollouts],
                                                [examples[indices[r.prompt_index]] for r in rollouts], scores,
                                                [len(r.response_ids) for r in rollouts]))
        record.update({f"time/{k}": v for k, v in times.items()})
        record.update(throughput_metrics(self._step_work(batch, rollouts, plan), times, self._peak()))
        record.update(peak_memory_mb(self.device))
        return record

    def _peak(self) -> float:
        if self._peak_flops is None:
            self._peak_flops = peak_flops_per_s(self.device, self.config.model.bf16, self.config.train.peak_tflops)
        return self._peak_flops

    def _step_work(self, batch, rollouts, plan: StepPlan) -> StepWork:
        refs = self.references
        return StepWork(
            parameters=sum(p.numel() for p in self.policy.parameters()),
            critic_parameters=sum(p.numel() for p in self.critic.model.parameters()) if self.critic else 0,
            generated_tokens=sum(len(r.response_ids) for r in rollouts),
            prompt_tokens=sum(len(r.prompt_ids) for r in rollouts),
            batch_tokens=int(batch.tokens.attention_mask.sum()),
            logprob_passes=1 + (refs.reference is not None)
            + (refs.lagged is not None and plan.kl_convex_weight < 1.0),
            update_passes=plan.updates_per_batch)

    def _reincarnate(self, step: int) -> None:
        self.references.reincarnate(self.policy)
        self.state.reincarnated = True
        self.buffer.evict(step + self.config.remix.history_window + 1)  # replay is off from here on: free it
        self.metrics.log({"type": "event", "event": "reincarnation", "step": step,
                          "rollouts/total": self.state.rollouts_total,
                          "message": f"reference <- policy after step {step - 1}; on-policy from step {step}"})
        logger.info("step %d: policy reincarnation (reference <- current policy, on-policy from now on)", step)

    # ------------------------------------------------------------------------------------------------ evaluation
    def eval_sets(self) -> dict[str, list[Example]]:
        if self._eval_sets is None:
            self._eval_sets = build_eval_sets(self.config)
        return self._eval_sets

    def evaluate(self, step: int):
        cfg = self.config.eval
        sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens or self.config.rollout.max_new_tokens,
                                  temperature=cfg.temperature, greedy=cfg.greedy,
                                  seed=self.config.train.seed * 7919 + step)
        report = evaluate(self.engine, self.tokenizer, self.eval_sets(), self.reward, sampling, samples=cfg.samples,
                          instruction=self.config.data.instruction, progress=False,
                          system_prompt=self.config.data.system_prompt)
        record = {"type": "eval", "step": step, "rollouts/total": self.state.rollouts_total,
                  "tokens/total": self.state.tokens_total}
        record.update(report.metrics(prefix="eval"))
        self.metrics.log(record)
        self.eval_history.append((step, report))
        self.hacking.observe_eval(step, pass_at_1_by_benchmark(report))
        report.write(self.run_dir / "eval" / f"step_{step:06d}")
        return report

    def save(self) -> Path:
        phase = self.schedule.plan(max(self.state.step, 1)).phase
        training = self._training_state()
        return checkpoint.save_checkpoint(self.run_dir, self.state.step,
                                          lambda directory: checkpoint.write_training_state(directory, training, phase),
                                          keep=self.config.checkpoint.keep)

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        cfg = self.config
        start_step = self.state.step + 1
        if start_step == 1 and cfg.eval.before_training and cfg.eval.benchmarks:
            self.evaluate(0)
        progress = tqdm(range(start_step, cfg.train.steps + 1), initial=start_step - 1, total=cfg.train.steps,
                        desc="train", disable=not cfg.logging.progress, dynamic_ncols=True)
        record: dict[str, Any] = {}
        for step in progress:
            record = self.train_step(step)
            self.metrics.log(record)
            summary = step_summary(record, cfg.train.steps)
            alarm = self.hacking.alarm
            if alarm is not None:
                summary += f"  WARNING {alarm.message}"
                self.metrics.log(alarm.event())
            if cfg.logging.progress:
                progress.set_postfix(reward=f"{record['reward/mean']:.3f}", rollouts=record["rollouts/total"])
                tqdm.write(summary)
            else:
                (logger.info if alarm is None else logger.warning)(summary)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                self.evaluate(step)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                self.save()
            if self.on_step_end is not None:
                self.on_step_end(self, record)
            if alarm is not None and cfg.reward.stop_on_hacking:
                self.stop_reason = f"stopped (reward.stop_on_hacking): {alarm.message}"
                logger.error("%s; checkpoint saved in %s", self.stop_reason, self.save())
                break
        progress.close()
        if self.stop_reason is not None:
            return record
        if cfg.checkpoint.save_final:
            self.save()
        if cfg.eval.after_training and cfg.eval.benchmarks:
            self.evaluate(self.state.step)
        return record

    def _sync_engine(self) -> None:
        """Push the policy's weights into an engine holding its own copy (vLLM), once per weight change."""
        if self._engine_weights_step != self.state.step:
            self.engine.update_weights(self.policy)
            self._engine_weights_step = self.state.step

    def close(self) -> None:
        self.metrics.close()
        self.hacking.close()
        for owner in (self.reward, self.engine):  # verifier worker processes; a vLLM engine's memory
            close = getattr(owner, "close", None)
            if close is not None:
                close()


def run_training(config: Config, resume: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None) -> Trainer:
    """Train from a config (or resume a run dir) and print the before/after evaluation table."""
    run_dir, resume_from = None, None
    if resume is not None:
        run_dir = Path(resume)
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise PathNotFoundError(f"no complete checkpoint under {run_dir / 'checkpoints'} to resume from")
    trainer = Trainer(config, run_dir=run_dir, resume_from=resume_from, on_step_end=on_step_end)
    try:
        trainer.train()
    finally:
        trainer.close()
    report_before_after(trainer.eval_history, trainer.run_dir, trainer.state.rollouts_total)
    if trainer.stop_reason is not None:
        print(f"\n{trainer.stop_reason}", file=sys.stderr)
    print(f"run directory: {trainer.run_dir}")
    return trainer


def config_for_resume(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with, as a dict (overrides are merged on top by the CLI)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise PathNotFoundError(f"{path} not found: is {run_dir} a remix-rft run directory?")
    return load_yaml(path)
