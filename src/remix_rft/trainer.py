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
`remix.reincarnate_at=auto`: after each mix step the reincarnation monitor (reincarnation.py) may move T to it.
`rollout.pipeline`: step 2 happens early, in a background job started before step 6 of the previous step with a
snapshot of pi_k (rollout/generator.py); its responses are one version old and carry that snapshot's log-probs.
Under torchrun each rank takes a contiguous share of the step's prompt groups (generates, scores and replays its
own), the models are FSDP2-sharded and the update is the one of the global batch (see `distributed`, `updates`).

Roles: `actor` (policy, optimizer, Mix-PPG update), `critic`, `references` (base, precedent), `generator` (step 2:
prompts, engine, scoring, pipelined jobs), `experience` (groups, batch, log-prob passes, advantages), reward,
`buffer`, `checkpoint` (whole state). The loop over the steps, evaluations, checkpoints and stops: run.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from remix_rft import checkpoint, evaluation, experience, informative, lora, metrics, perf
from remix_rft.actor import Actor
from remix_rft.buffer import ReplayBuffer
from remix_rft.checkpoint import TrainState
from remix_rft.config import Config
from remix_rft.critic import Critic
from remix_rft.data.sampler import TrainingPrompts
from remix_rft.data.types import Example
from remix_rft.distributed import Distributed
from remix_rft.errors import ConfigError
from remix_rft.experience import FreshRollouts
from remix_rft.interrupt import Interrupted
from remix_rft.logprobs import accumulate_tied_grad_in_place, run_head_in_float32
from remix_rft.memory import active_allocator, bound_kernel_caches, memory_at_hand, return_free_pages
from remix_rft.metrics import MetricsLogger
from remix_rft.models import enable_activation_checkpointing, load_model, load_tokenizer
from remix_rft.plan import architecture_from_hf_config, gradient_checkpointing_for_run
from remix_rft.preflight import check_writable
from remix_rft.references import build_references
from remix_rft.reincarnation import ReincarnationMonitor, reincarnation_event, watch_step
from remix_rft.rewards import reward_from_config
from remix_rft.rewards.hacking import build_hacking_monitor
from remix_rft.rollout import build_engine, engine_options
from remix_rft.rollout.generator import RolloutGenerator
from remix_rft.run import TrainingRun, report, resume_hint
from remix_rft.schedule import StepPlan, build_schedule
from remix_rft.watchdog import Watchdog, mark_step

__all__ = ["Trainer", "run_training"]

logger = logging.getLogger(__name__)


class Trainer(TrainingRun):
    """Builds every role from a Config and defines one training step (module docstring); `train()` and the rest of
    the run around the steps (evaluation, checkpoints, stop requests, `close`) come from `TrainingRun` (run.py)."""

    def __init__(self, config: Config, run_dir: Path | None = None, resume_from: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None):
        cfg = self.config = config
        self.on_step_end = on_step_end
        bound_kernel_caches()  # before the first bf16 matmul: oneDNN's per-shape caches grow with every batch shape
        self.dist = Distributed.from_environment(cfg.model.device)
        self.device = self.dist.device
        if self.dist.active and len(set(self.dist.all_gather_object(cfg.model.compute_dtype))) > 1:  # `auto` measures
            raise ConfigError("config key 'model.dtype': auto resolved to different precisions on the ranks; set "
                              "float32 or bfloat16")
        if resume_from is not None:
            checkpoint.check_world_size(resume_from, self.dist.world_size)
        checkpoint.seed_everything(cfg.train.seed)
        # input first (preflight.py): a custom reward that does not import, an output folder that cannot be written, a
        # wrong model name, data file or benchmark fails in seconds, before a run dir is written or weights load
        self.reward = reward_from_config(cfg.reward)  # imports a custom reward; the math grader starts workers lazily
        check_writable(run_dir or Path(cfg.logging.output_dir), "--resume" if run_dir else "logging.output_dir")
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.prompts = TrainingPrompts(cfg, self.tokenizer)
        evaluates = cfg.eval.benchmarks and (cfg.eval.before_training or cfg.eval.after_training or cfg.eval.every)
        self._eval_sets: dict[str, list[Example]] | None = evaluation.build_eval_sets(cfg) if evaluates else None
        self.run_dir = metrics.create_run_dir(cfg, run_dir, self.dist)  # rank 0's name; it writes config.yaml

        self.pad_id = self.tokenizer.pad_token_id
        # float32 master weights whatever model.dtype says: bf16 runs as autocast, so AdamW's small updates are not
        # rounded away (at lr 1e-6 most are below half a bf16 ulp); frozen copies take the compute dtype
        at_hand = memory_at_hand(self.device.type, self.device.index)  # before the weights: the estimate counts them
        policy = load_model(cfg.model.name, dtype="float32").to(self.device)
        policy.train()
        # activation checkpointing only where memory is short (model.gradient_checkpointing=auto: the plan's estimate
        # against the memory at hand); every rank alike, since FSDP gathers a layer's weights again to recompute it
        lean, why = gradient_checkpointing_for_run(
            cfg, lambda: architecture_from_hf_config(policy.config, cfg.model.name, "the loaded model"),
            self.prompts.longest_prompt_tokens, at_hand, self.device.type)
        if self.dist.all_reduce([float(lean)], op="max")[0] > 0:
            enable_activation_checkpointing(policy)
            why = why if lean else f"gradient checkpointing on: another rank is short of memory (here: {why})"
        metrics.add_run_info(self.run_dir, self.dist, gradient_checkpointing=why)
        if self.dist.is_main:
            logger.info("%s", why)
        if cfg.model.bf16 and cfg.model.lm_head_compute_dtype == "float32":
            run_head_in_float32(policy)  # before any copy: the frozen references and the engine share the choice
        shard = lambda model: self.dist.shard(model, bf16=cfg.model.bf16)  # noqa: E731
        # the critic copies the base trunk (and adds its own adapters); then the policy gets its adapters (lora.py)
        self.critic = Critic(policy, cfg, self.device, self.dist) if cfg.algorithm.name == "ppo" else None
        if cfg.model.lora.enabled:
            lo = cfg.model.lora
            lora.inject(policy, lo.r, lo.alpha, lo.dropout, lo.peft_target_modules)
            if self.dist.is_main:
                logger.info("LoRA: %s, lr %.3g", lora.adapter_info(policy), cfg.policy_lr)
        self.references = build_references(policy, cfg, self.dist)
        if not self.dist.active:  # after the critic's copy of the trunk (its embedding stays dense). Single process
            # only: with it on, 3 of 9 runs of the 2-rank FSDP2 tests (gloo) lost a rank to SIGABRT, cause not found
            accumulate_tied_grad_in_place(policy)
        self.actor = Actor(shard(policy), cfg, self.dist)
        self.engine = build_engine(cfg.rollout.engine, policy, self.tokenizer, **engine_options(cfg))
        self.sampler_pi_k = experience.SamplerPiK(cfg)  # rollout.reuse_sampler_logprobs: pi_k without its pass
        self.hacking = build_hacking_monitor(cfg.reward, self.reward, seed=cfg.train.seed)
        super().__init__(announce_stop=self.dist.is_main)  # the run's stop request (Ctrl-C) and its outcome (run.py)
        # train.watchdog_seconds: a phase without progress stops the run with one line (watchdog.py)
        self.watchdog = Watchdog(cfg.train.watchdog_seconds, self.dist.rank)
        self.schedule = build_schedule(cfg)
        # remix.reincarnate_at=auto: triggers read each mix-phase step's metrics and move T (reincarnation.py)
        self.reincarnation = ReincarnationMonitor(cfg.remix.auto_reincarnation,
                                                  kl_measured=self.references.lagged is not None) \
            if cfg.auto_reincarnation else None
        if self.reincarnation is not None and self.dist.is_main:
            logger.info("adaptive reincarnation: triggers %s", ", ".join(self.reincarnation.active_triggers) or "none")
        r = cfg.remix
        self.buffer = ReplayBuffer(r.history_window, seed=cfg.train.seed + self.dist.rank, mode=r.replay,
                                   recency=r.replay_recency, max_replays=r.max_replays,
                                   advantage_signal=cfg.advantage_estimator not in experience.CRITIC_ESTIMATORS)
        # step 2 (rollout/generator.py): draws the prompts (data.selection), syncs the engine's weights (checked,
        # rollout.sync_check), samples and scores; rollout.pipeline: a snapshot of the policy generates ahead
        self.generator = RolloutGenerator(cfg, self.dist, self.tokenizer, self.prompts, self.reward, self.engine,
                                          self.schedule, self.watchdog, policy=lambda: self.policy,
                                          trained_step=lambda: self.state.step)
        self.selector, self.pipeline = self.generator.selector, self.generator.pipeline
        self.state = TrainState()

        if resume_from is not None:
            self.state = checkpoint.read_training_state(resume_from, self._training_state(),
                                                     dtype=cfg.model.frozen_storage_dtype)
            if self.reincarnation is not None and self.reincarnation.decision is not None:
                self.schedule.reincarnate_after(self.reincarnation.decision.step)
        if self.device.type == "cpu" and self.dist.is_main:  # jemalloc: README, Memory; remix_rft/memory.py
            logger.info("host memory allocator: %s", active_allocator())
        # rank 0 writes the run's metrics (after dropping lines logged after the checkpoint)
        self.metrics = MetricsLogger.for_run(cfg, self.run_dir, resume_step=self.state.step if resume_from else None) \
            if self.dist.is_main else None

    @property
    def policy(self) -> torch.nn.Module:
        return self.actor.model

    def train_step(self, step: int) -> dict[str, Any]:
        mark_step(self, step)  # the watchdog: what a stall before the update can roll back to
        plan = self.begin_step(step)
        with self.watchdog.phase("generation"):
            fresh = self.generator.take(step, plan) if self.pipeline is not None else None  # generated ahead
            fresh = fresh if fresh is not None else self.generate(step, plan)
            if self.config.train.dynamic_sampling:  # DAPO: more rounds until the groups' rewards differ
                fresh = self.generator.sample_dynamically(step, plan, fresh)
        with self.watchdog.phase("update", changes_state=True):
            return self.learn(step, plan, fresh)

    def begin_step(self, step: int) -> StepPlan:
        """1. plan; reincarnate: the current policy becomes the KL base and training goes on-policy."""
        plan = self.schedule.plan(step)
        if plan.reincarnate and not self.state.reincarnated:
            self.references.reincarnate(self.policy)
            self.state.reincarnated = True
            self.buffer.evict(step + self.config.remix.history_window + 1)  # replay is off from here on: free it
            self._log(reincarnation_event(step, self.reincarnation, self.state.rollouts_total))
            logger.info("step %d: policy reincarnation (reference <- current policy, on-policy from now on)", step)
        if plan.fresh_prompts < self.dist.world_size:
            raise ConfigError(f"config key 'train.prompts_per_step': step {step} has {plan.fresh_prompts} fresh prompts "
                              f"for {self.dist.world_size} ranks; each rank needs at least one prompt group")
        return plan

    def generate(self, step: int, plan: StepPlan, prompts: int | None = None, share: tuple[int, int] | None = None,
                 salt: int = 0) -> FreshRollouts:
        """2. fresh responses for this rank's share of the step's fresh prompts, scored (`RolloutGenerator.generate`
        says what `prompts`, `share` and `salt` select)."""
        return self.generator.generate(step, plan, prompts, share, salt)

    def learn(self, step: int, plan: StepPlan, fresh: FreshRollouts) -> dict[str, Any]:
        """Steps 3-7 on this rank's fresh rollouts; returns the step's metrics (reduced over ranks)."""
        cfg, step_start, rollouts = self.config, time.perf_counter(), fresh.rollouts
        times = dict(fresh.times)
        self.buffer.evict(step)
        generated = experience.make_groups(cfg, step, fresh.indices, self.prompts.examples, rollouts, fresh.scores,
                                           fresh.versions, fresh.trainer_logprobs)
        self.generator.observe(generated)  # data.selection: which prompts were informative
        fresh_groups = generated
        if cfg.train.dynamic_sampling:  # every response was generated and counted; the batch holds the informative
            start, stop = self.dist.share(plan.fresh_prompts)
            fresh_groups, _ = informative.choose_fresh(generated, stop - start)

        # 3. replayed groups: whole prompt groups from the last `history_window` policies; informative replay also
        # puts buffered groups in the place of fresh ones whose rewards are all equal (advantage 0)
        start, stop = self.dist.share(plan.replay_prompts)
        replace = cfg.remix.replay == "informative" and cfg.remix.replace_uninformative and plan.replay_prompts > 0 \
            and self.buffer.advantage_signal
        fresh_groups, replay_groups, replacements = informative.draw_replay(self.buffer, step, stop - start,
                                                                            fresh_groups, replace)
        self.ledger = metrics.prompt_ledger(step, generated, fresh_groups, replay_groups, self.dist)
        batch = experience.assemble(fresh_groups, replay_groups, self.pad_id, self.device)

        # 4. log-prob passes without grad
        t0 = time.perf_counter()
        # the KL trigger of adaptive reincarnation reads kl/precedent on every mix-phase step
        watch_kl = self.reincarnation is not None and plan.phase == "mix"
        sampler_pi_k = self.sampler_pi_k.active  # the run's first step runs the pass anyway, to check the sampler
        counted = perf.DECODER_TOKENS.snapshot()  # the passes' and the update's FLOPs: the tokens they ran (perf.py)
        with self.watchdog.phase("logprobs"):
            pass_metrics = experience.logprob_passes(cfg, batch, plan, self.policy, self.references,
                                                     self.critic.model if self.critic else None, self.dist.gathered,
                                                     measure_precedent=watch_kl, sampler_pi_k=sampler_pi_k)
        times["logprobs"] = time.perf_counter() - t0
        self.sampler_pi_k.after_pass(pass_metrics, self.dist)  # the first step checks the sampler's log-probs
        experience.keep_logprobs(cfg, fresh_groups, batch)  # what these groups carry when replayed

        # 5. advantages
        experience.compute_advantages(cfg, batch, plan, reduce_sum=self.dist.sum_over_ranks)  # global whitening
        signal = {**informative.signal_metrics(generated, fresh_groups, replay_groups, batch.advantages,
                                               batch.tokens.response_mask), "replay/replacements": replacements}

        # pi_{k-1} served this step's precedent log-probs (above); the lagged copy now takes pi_k for the next step
        self.references.advance_precedent(self.policy)

        # one-step-off: step + 1's responses are generated, by the weights this update starts from, while it runs
        if self.pipeline is not None and cfg.rollout.max_staleness >= 1:
            self.generator.launch(step + 1)

        # 6. updates
        t0 = time.perf_counter()
        update_metrics = self.actor.update(batch, plan, step)
        if self.critic is not None:
            update_metrics.update(self.critic.update(batch, plan, step))
        times["update"] = time.perf_counter() - t0

        # 7. the fresh groups join the buffer as generated by pi_k (version = step)
        if cfg.remix.enabled and plan.phase == "mix":
            self.buffer.add(fresh_groups)

        self.state.finish_step(step, *self.dist.all_reduce([len(rollouts), sum(len(r.response_ids) for r in rollouts)]))
        # pipelined: generation overlapped an earlier step; this step waited `generation_wait` for it (in the sum)
        overlapped = ("generation", "scoring", "weight_sync", "trainer_logprobs") if "generation_wait" in times else ()
        times["step"] = time.perf_counter() - step_start + sum(v for k, v in fresh.times.items() if k not in overlapped)

        hacking = self.hacking.observe_step(step, [r.text for r in rollouts], fresh.examples, fresh.scores,
                                            [len(r.response_ids) for r in rollouts])
        # freed pages back to the OS before the step's memory is read: between steps only what is live stays
        # resident, and memory/rss_mb tracks that, not how far the allocator's decay timer had got (README, Memory)
        return_free_pages()
        work = perf.step_work(self.policy, self.critic, self.references, batch, rollouts, plan, sampler_pi_k, counted)
        peak_flops = perf.peak_flops_per_s(self.device, cfg.model.bf16, cfg.train.peak_tflops)
        record = {**experience.step_record(step, plan, rollouts, fresh.scores, batch, replay_groups, self.state),
                  "buffer/groups": len(self.buffer), "lr": self.actor.lr, **signal, **self.generator.metrics(),
                  **pass_metrics, **update_metrics, **hacking,
                  **{f"time/{k}": v for k, v in times.items()}, **perf.throughput_metrics(work, times, peak_flops),
                  **metrics.peak_memory_mb(self.device)}
        # pipelined: the policy versions the fresh responses lag behind (rollouts/staleness)
        return metrics.reduce_step_record(record, self.dist, batch, len(rollouts), step,
                                          fresh_groups if self.pipeline is not None else None)

    def end_step(self, step: int, record: dict[str, Any]) -> None:
        """After the step's update (in the loop, run.py): adaptive reincarnation may move T to this step; with
        `rollout.max_staleness=0` the next step's job starts only now, from the updated weights (no overlap)."""
        if self.reincarnation is not None and not self.state.reincarnated and self.schedule.plan(step).phase == "mix":
            watch_step(self.reincarnation, step, record, self.dist, self.schedule)  # remix.reincarnate_at=auto
        if self.pipeline is not None and self.config.rollout.max_staleness == 0 and not self.stop_requested():
            self.generator.launch(step + 1)


def run_training(config: Config, resume: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None) -> Trainer:
    """Train from a config (or resume a run dir) and print the before/after evaluation table. After a stop request
    (the first Ctrl-C, `request_stop`) it returns early with `trainer.interrupted` set and prints the resume command;
    a second Ctrl-C raises `interrupt.Interrupted` (a KeyboardInterrupt) carrying that line."""
    resume_from = checkpoint.checkpoint_to_resume(Path(resume)) if resume is not None else None
    trainer = Trainer(config, run_dir=resume, resume_from=resume_from, on_step_end=on_step_end)
    try:
        trainer.train()
    except KeyboardInterrupt:  # a second Ctrl-C: nothing more is saved, the last complete checkpoint stays usable
        raise Interrupted(resume_hint(trainer, "interrupted") if trainer.dist.is_main else "") from None
    finally:
        trainer.close()
    report(trainer)
    return trainer
