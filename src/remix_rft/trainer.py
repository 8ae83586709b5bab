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
snapshot of pi_k (rollout/pipeline.py); its responses are one version old and carry that snapshot's log-probs.
Under torchrun each rank takes a contiguous share of the step's prompt groups (generates, scores and replays its
own), the models are FSDP2-sharded and the update is the one of the global batch (see `distributed`, `updates`).

Roles: `actor` (policy, optimizer, Mix-PPG update), `critic`, `references` (base, precedent), `experience` (groups,
batch, log-prob passes, advantages), rollout engine, reward, `buffer`, `data.sampler`, `checkpoint` (whole state).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from remix_rft import checkpoint, evaluation, experience, informative, lora, metrics, perf
from remix_rft.actor import Actor
from remix_rft.buffer import ReplayBuffer
from remix_rft.checkpoint import TrainingState, TrainState
from remix_rft.config import Config
from remix_rft.critic import Critic
from remix_rft.data.sampler import TrainingPrompts
from remix_rft.data.selection import PromptSelector
from remix_rft.data.types import Example
from remix_rft.distributed import Distributed, launched_by_torchrun
from remix_rft.errors import ConfigError
from remix_rft.evaluation import pass_at_1_by_benchmark, report_before_after
from remix_rft.experience import FreshRollouts
from remix_rft.interrupt import Interrupted, StopRequest
from remix_rft.logprobs import accumulate_tied_grad_in_place, run_head_in_float32
from remix_rft.memory import active_allocator, bound_kernel_caches, return_free_pages
from remix_rft.metrics import MetricsLogger
from remix_rft.models import enable_activation_checkpointing, load_model, load_tokenizer
from remix_rft.preflight import check_writable
from remix_rft.references import build_references
from remix_rft.reincarnation import ReincarnationMonitor
from remix_rft.rewards import check_scores, reward_from_config
from remix_rft.rewards.hacking import build_hacking_monitor
from remix_rft.rollout import SamplingParams, build_engine, engine_options
from remix_rft.rollout.pipeline import RolloutPipeline, copy_weights
from remix_rft.rollout.sync_check import WeightSyncCheck
from remix_rft.schedule import StepPlan, build_schedule
from remix_rft.watchdog import Watchdog, mark_step, stopping_on_stall, watched

__all__ = ["Trainer", "run_training"]

logger = logging.getLogger(__name__)


class Trainer:
    """Builds every role from a Config and runs `train()`; see the module docstring for one step."""

    def __init__(self, config: Config, run_dir: Path | None = None, resume_from: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None):
        cfg = self.config = config
        self.on_step_end = on_step_end
        bound_kernel_caches()  # before the first bf16 matmul: oneDNN's per-shape caches grow with every batch shape
        self.dist = Distributed.from_environment(cfg.model.device)
        self.device = self.dist.device
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
        policy = load_model(cfg.model.name, dtype="float32").to(self.device)
        policy.train()
        if cfg.model.gradient_checkpointing:
            enable_activation_checkpointing(policy)
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
        self._engine_weights_step: int | None = 0  # the step whose weights the engine holds (built from step 0's)
        # pipelined generation (rollout/pipeline.py): a plain float32 snapshot of the weights a job generates with
        # (the HF engine samples it; with vLLM it gives the trainer's log-probs of what vLLM sampled)
        self.pipeline = RolloutPipeline() if cfg.rollout.pipeline else None
        self._snapshot = None
        self._generation_engine = self.engine  # what a pipelined job samples with: vLLM its own copy of the weights
        # vLLM without staleness samples its own weights and needs no trainer log-probs of older ones
        if self.pipeline is not None and (cfg.rollout.engine == "hf" or cfg.rollout.max_staleness >= 1):
            self._snapshot = load_model(cfg.model.name, dtype="float32").to(self.device).requires_grad_(False).eval()
            if cfg.model.lora.enabled:  # the same adapters, copied unmerged: W + BA rounded to bf16 is another policy
                lo = cfg.model.lora
                lora.inject(self._snapshot, lo.r, lo.alpha, lo.dropout, lo.peft_target_modules)
                self._snapshot.requires_grad_(False).eval()
            if cfg.model.bf16 and cfg.model.lm_head_compute_dtype == "float32":
                run_head_in_float32(self._snapshot)
            if cfg.rollout.engine == "hf":
                self._generation_engine = build_engine("hf", self._snapshot, self.tokenizer, **engine_options(cfg))
        # rollout.sync_check: an engine with its own copy of the weights must score a probe as the trainer does
        self.sync_check = WeightSyncCheck(self.tokenizer, cfg.model.bf16, cfg.rollout.sync_check_bound,
                                          self.dist.rank) if cfg.rollout.sync_check else None
        self.hacking = build_hacking_monitor(cfg.reward, self.reward, seed=cfg.train.seed)
        self.stop_reason: str | None = None  # set when the reward-hacking alarm ends the run
        # Ctrl-C (interrupt.py): stop at the next step boundary; under torchrun the launcher relays the terminal's signal
        self._stop = StopRequest(ignore_duplicates=launched_by_torchrun(), announce=self.dist.is_main)
        self._stop_agreed = False
        # train.watchdog_seconds: a phase without progress stops the run with one line (watchdog.py)
        self.watchdog = Watchdog(cfg.train.watchdog_seconds, self.dist.rank)
        self.interrupted = False  # the run ended early on a stop request, with a checkpoint of its last step
        self._saved_step: int | None = None  # the step of this process's last checkpoint
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
        # data.selection: one history on every rank (outcomes are gathered), so every rank draws the same prompts
        d = cfg.data
        self.selector = PromptSelector(cfg.train.seed, d.selection_skip_base, d.selection_max_skip,
                                       d.selection_revisit_after) if d.selection == "skip_uninformative" else None
        self.state = TrainState()
        self.eval_history: list[tuple[int, Any]] = []

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

    def _sampling(self, step: int, salt: int = 0) -> SamplingParams:
        """The step's sampling settings; `salt` > 0 seeds an extra generation round of the same step apart."""
        ro = self.config.rollout
        seed = (self.config.train.seed * 1_000_003 + step) * self.dist.world_size + self.dist.rank
        seed += salt * 1_000_000_007
        return SamplingParams(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, seed=seed)

    def _training_state(self) -> TrainingState:
        return TrainingState(state=self.state, actor=self.actor, critic=self.critic, references=self.references,
                             buffer=self.buffer, prompts=self.prompts, tokenizer=self.tokenizer, dist=self.dist,
                             hacking=self.hacking, base_model=self.config.model.name,
                             components={name: component for name, component in
                                         (("reincarnation", self.reincarnation), ("pipeline", self.pipeline),
                                          ("selection", self.selector))
                                         if component is not None})

    def train_step(self, step: int) -> dict[str, Any]:
        mark_step(self, step)  # the watchdog: what a stall before the update can roll back to
        plan = self.begin_step(step)
        with self.watchdog.phase("generation"):
            fresh = self._take_generated(step, plan) if self.pipeline is not None else None
            fresh = fresh if fresh is not None else self.generate(step, plan)
            if self.config.train.dynamic_sampling:
                fresh = self._sample_dynamically(step, plan, fresh)
        with self.watchdog.phase("update", changes_state=True):
            return self.learn(step, plan, fresh)

    def _draw_prompts(self, count: int) -> list[int]:
        """The next `count` training prompts of the run (the same on every rank), past the selector's skips."""
        if self.selector is None:
            return self.prompts.next(count)
        return self.selector.select(self.prompts.next, count)[0]

    def _sample_dynamically(self, step: int, plan: StepPlan, fresh: FreshRollouts) -> FreshRollouts:
        """train.dynamic_sampling (DAPO): more generation rounds, each for the prompts the ranks still lack, until
        every rank holds its share of the step's fresh prompts in groups whose rewards differ (`learn` trains on
        those); at most `dynamic_sampling_max_rounds` rounds in all."""
        start, stop = self.dist.share(plan.fresh_prompts)
        size = self.config.train.samples_per_prompt
        for extra_round in range(1, self.config.train.dynamic_sampling_max_rounds):
            have = sum(informative.group_informative([s.reward for s in fresh.scores], size))
            needs = [int(n) for n in self.dist.all_gather_object(max(stop - start - have, 0))]
            if sum(needs) == 0:
                break
            offset = sum(needs[:self.dist.rank])
            fresh = fresh.extend(self.generate(step, plan, prompts=sum(needs),
                                               share=(offset, offset + needs[self.dist.rank]),
                                               salt=1 + extra_round))  # salt 1: the pipeline's top-up
        return fresh

    def begin_step(self, step: int) -> StepPlan:
        """1. plan; reincarnate: the current policy becomes the KL base and training goes on-policy."""
        plan = self.schedule.plan(step)
        if plan.reincarnate and not self.state.reincarnated:
            self._reincarnate(step)
        if plan.fresh_prompts < self.dist.world_size:
            raise ConfigError(f"config key 'train.prompts_per_step': step {step} has {plan.fresh_prompts} fresh prompts "
                              f"for {self.dist.world_size} ranks; each rank needs at least one prompt group")
        return plan

    def generate(self, step: int, plan: StepPlan, prompts: int | None = None, share: tuple[int, int] | None = None,
                 salt: int = 0) -> FreshRollouts:
        """2. fresh responses for this rank's share of the step's fresh prompts (or of `prompts` of them; `share`:
        this rank's slice of them, which may be empty: every rank still takes part in the weight gathers), scored.
        `salt` > 0: an extra round of the step, sampled apart from the first."""
        count = plan.fresh_prompts if prompts is None else prompts
        start, stop = share if share is not None else self.dist.share(count)
        indices = self._draw_prompts(count)[start:stop]
        t0 = time.perf_counter()
        self._sync_engine()  # every rank: a sharded parameter is gathered one tensor at a time
        t_sync = time.perf_counter()
        with self.dist.gathered(self.policy):
            rollouts = self.engine.generate([self.prompts.prompt(i) for i in indices],
                                            self.config.train.samples_per_prompt, self._sampling(step, salt)) \
                if indices else []
        t1 = time.perf_counter()
        examples = [self.prompts.examples[indices[r.prompt_index]] for r in rollouts]
        with self.watchdog.phase("scoring"):
            scores = check_scores(self.reward, self.reward.score([r.text for r in rollouts], examples), examples) \
                if rollouts else []
        times = {"weight_sync": t_sync - t0, "generation": t1 - t_sync, "scoring": time.perf_counter() - t1}
        return FreshRollouts(indices, rollouts, examples, scores, times)

    def learn(self, step: int, plan: StepPlan, fresh: FreshRollouts) -> dict[str, Any]:
        """Steps 3-7 on this rank's fresh rollouts; returns the step's metrics (reduced over ranks)."""
        cfg, step_start, rollouts = self.config, time.perf_counter(), fresh.rollouts
        times = dict(fresh.times)
        self.buffer.evict(step)
        generated = experience.make_groups(cfg, step, fresh.indices, self.prompts.examples, rollouts, fresh.scores,
                                           fresh.versions, fresh.trainer_logprobs)
        if self.selector is not None:  # every rank's outcomes, in rank order: one history on every rank
            for outcomes in self.dist.all_gather_object([(g.meta["index"], g.informative) for g in generated]):
                self.selector.observe(outcomes)
        fresh_groups = generated
        if cfg.train.dynamic_sampling:  # every response was generated and counted; the batch holds the informative
            start, stop = self.dist.share(plan.fresh_prompts)
            fresh_groups, _ = informative.choose_fresh(generated, stop - start)

        # 3. replayed groups: whole prompt groups from the last `history_window` policies; informative replay also
        # puts buffered groups in the place of fresh ones whose rewards are all equal (advantage 0)
        start, stop = self.dist.share(plan.replay_prompts)
        planned = stop - start
        wanted = planned
        if cfg.remix.replay == "informative" and cfg.remix.replace_uninformative and plan.replay_prompts > 0 \
                and self.buffer.advantage_signal:
            wanted += sum(not g.informative for g in fresh_groups)
        replay_count = min(wanted, self.buffer.drawable(step))
        replay_groups = self.buffer.sample(replay_count, step) if replay_count else []
        replacements = max(replay_count - planned, 0)
        fresh_groups = informative.replace_uninformative(fresh_groups, replacements)
        self.ledger = self._prompt_ledger(step, generated, fresh_groups, replay_groups)
        batch = experience.assemble(fresh_groups, replay_groups, self.pad_id, self.device)

        # 4. log-prob passes without grad
        t0 = time.perf_counter()
        # the KL trigger of adaptive reincarnation reads kl/precedent on every mix-phase step
        watch_kl = self.reincarnation is not None and plan.phase == "mix"
        with self.watchdog.phase("logprobs"):
            pass_metrics = experience.logprob_passes(cfg, batch, plan, self.policy, self.references,
                                                     self.critic.model if self.critic else None, self.dist.gathered,
                                                     measure_precedent=watch_kl)
        times["logprobs"] = time.perf_counter() - t0
        experience.keep_logprobs(cfg, fresh_groups, batch)  # what these groups carry when replayed

        # 5. advantages
        experience.compute_advantages(cfg, batch, plan, reduce_sum=self.dist.sum_over_ranks)  # global whitening
        signal = {**informative.signal_metrics(generated, fresh_groups, replay_groups, batch.advantages,
                                               batch.tokens.response_mask), "replay/replacements": replacements}

        # pi_{k-1} served this step's precedent log-probs (above); the lagged copy now takes pi_k for the next step
        self.references.advance_precedent(self.policy)

        # one-step-off: step + 1's responses are generated, by the weights this update starts from, while it runs
        if self.pipeline is not None and cfg.rollout.max_staleness >= 1:
            self._launch_generation(step + 1)

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
        work = perf.step_work(self.policy, self.critic, self.references, batch, rollouts, plan)
        peak_flops = perf.peak_flops_per_s(self.device, cfg.model.bf16, cfg.train.peak_tflops)
        record = {**experience.step_record(step, plan, rollouts, fresh.scores, batch, replay_groups, self.state),
                  "buffer/groups": len(self.buffer), "lr": self.actor.lr, **signal, **self._selection_metrics(),
                  **({"sync/probe_gap": self.sync_check.last_gap}
                     if self.sync_check is not None and self.sync_check.last_gap is not None else {}),
                  **pass_metrics, **update_metrics, **hacking,
                  **{f"time/{k}": v for k, v in times.items()}, **perf.throughput_metrics(work, times, peak_flops),
                  **metrics.peak_memory_mb(self.device)}
        mask, replay = batch.tokens.response_mask, batch.is_replay
        record = metrics.reduce_over_ranks(
            record, self.dist, len(rollouts), float(mask.sum()),
            kind_tokens={"fresh": float(mask[~replay].sum()), "replay": float(mask[replay].sum())},
            kind_rows={"fresh": float((~replay).sum()), "replay": float(replay.sum())})
        record["distributed/world_size"] = self.dist.world_size
        if self.pipeline is not None:  # policy versions the fresh responses lag behind (0 synchronous, 1 pipelined)
            lag, groups = self.dist.all_reduce([float(sum(step - g.version for g in fresh_groups)),
                                                float(len(fresh_groups))])
            record["rollouts/staleness"] = lag / max(groups, 1.0)
        return record

    def _prompt_ledger(self, step: int, generated: list, trained: list, replayed: list) -> dict[str, Any]:
        """The step's line of the prompt ledger (metrics.jsonl, type "ledger"): the training-set indices it generated
        for, trained on fresh, and replayed (with the version that generated them), every rank's in rank order. A
        resumed run must write the same lines as an uninterrupted one (tests/test_invariants.py)."""
        mine = {"generated": [g.meta["index"] for g in generated], "trained": [g.meta["index"] for g in trained],
                "replayed": [[g.meta["index"], g.version] for g in replayed]}
        ranks = self.dist.all_gather_object(mine)
        return {"type": "ledger", "step": step, **{key: [x for rank in ranks for x in rank[key]] for key in mine}}

    def _max_over_ranks(self, value: float) -> float:
        return self.dist.all_reduce([value], op="max")[0]

    def _selection_metrics(self) -> dict[str, int]:
        """Prompts the selector skipped (cost nothing, generated nothing) since the last record, and in all."""
        if self.selector is None:
            return {}
        selector = self.selector
        skipped, selector.reported_total = selector.skipped_total - selector.reported_total, selector.skipped_total
        return {"selection/skipped": skipped, "selection/skipped_total": selector.skipped_total}

    # ---------------------------------------------------------------------------------- pipelined generation
    @watched("weight_sync")
    def _launch_generation(self, step: int) -> None:
        """Draw step `step`'s prompts and generate them in the background with a snapshot of the current weights
        (version = the next step to train: what synchronous generation at that point would tag them)."""
        if step > self.config.train.steps:
            return
        version = self.state.step + 1
        plan = self.schedule.plan(step)
        start, stop = self.dist.share(plan.fresh_prompts)
        indices = self._draw_prompts(plan.fresh_prompts)[start:stop]
        t0 = time.perf_counter()
        stale = version != step  # the trainer's log-probs under these weights are needed at `step`
        if self.config.rollout.engine == "hf" or stale:
            copy_weights(self.policy, self._snapshot)  # every rank: a sharded parameter is gathered one at a time
            if self.sync_check is not None:  # the sharded policy's own forward: no whole-model unshard for a probe
                self.sync_check.verify("pipeline snapshot", self.sync_check.logprobs(self._snapshot, self.device),
                                       self.sync_check.logprobs(self.policy, self.device), self._max_over_ranks)
        if self.config.rollout.engine != "hf":
            self._sync_engine()  # vLLM samples its own copy: the same weights
        sync = time.perf_counter() - t0
        self.pipeline.start(step, lambda: self._generation_job(step, version, indices, sync, stale))

    def _generation_job(self, step: int, version: int, indices: list[int], sync: float, stale: bool) -> FreshRollouts:
        """The background job: sample, score and (when stale) the snapshot's own log-probs of the sampled tokens."""
        cfg = self.config
        t0 = time.perf_counter()
        with self.watchdog.phase("generation"):  # this thread's own phases (watchdog.py)
            rollouts = self._generation_engine.generate([self.prompts.prompt(i) for i in indices],
                                                        cfg.train.samples_per_prompt, self._sampling(step))
        t1 = time.perf_counter()
        examples = [self.prompts.examples[indices[r.prompt_index]] for r in rollouts]
        with self.watchdog.phase("scoring"):
            scores = check_scores(self.reward, self.reward.score([r.text for r in rollouts], examples), examples)
        t2 = time.perf_counter()
        trainer_logprobs = experience.generating_logprobs(cfg, self._snapshot, rollouts, self.pad_id, self.device) \
            if stale else None
        times = {"weight_sync": sync, "generation": t1 - t0, "scoring": t2 - t1,
                 "trainer_logprobs": time.perf_counter() - t2}
        return FreshRollouts(indices, rollouts, examples, scores, times, [version] * len(indices), trainer_logprobs)

    def _take_generated(self, step: int, plan: StepPlan) -> FreshRollouts | None:
        """The responses generated ahead for `step`, topped up with fresh ones from the current weights when the plan
        now asks for more prompts (an adaptive reincarnation decided after they were launched)."""
        t0 = time.perf_counter()
        fresh = self.pipeline.take(step)
        if fresh is None:
            return None
        fresh.times["generation_wait"] = time.perf_counter() - t0
        launched = sum(self.dist.all_reduce([float(len(fresh.indices))]))  # prompts drawn for the step, all ranks
        if plan.fresh_prompts > launched:
            # salted: the job's seed drew other prompts' responses (issue 35: 88% shared tokens unsalted)
            fresh = fresh.extend(self.generate(step, plan, prompts=plan.fresh_prompts - int(launched), salt=1))
        return fresh

    def _watch_reincarnation(self, step: int, plan: StepPlan, record: dict[str, Any]) -> None:
        """Adaptive reincarnation: rank 0's monitor reads the step's metrics; when a trigger fires, T moves to this
        step (every rank follows rank 0) and the step's record says which trigger fired."""
        monitor = self.reincarnation
        if monitor is None or self.state.reincarnated or plan.phase != "mix":
            return
        decision = monitor.observe(step, record) if self.dist.is_main else None
        record.update(monitor.signals())
        decision = self.dist.broadcast_object(decision)
        if decision is not None:
            monitor.decision = decision
            self.schedule.reincarnate_after(decision.step)
            record.update({"reincarnation/trigger": decision.trigger, "reincarnation/message": decision.message})

    def _reincarnate(self, step: int) -> None:
        self.references.reincarnate(self.policy)
        self.state.reincarnated = True
        self.buffer.evict(step + self.config.remix.history_window + 1)  # replay is off from here on: free it
        decision = self.reincarnation.decision if self.reincarnation is not None else None
        why = f" ({decision.message})" if decision is not None else ""
        self._log({"type": "event", "event": "reincarnation", "step": step, "rollouts/total": self.state.rollouts_total,
                   **(decision.to_dict() if decision is not None else {}),
                   "message": f"reference <- policy after step {step - 1}; on-policy from step {step}{why}"})
        logger.info("step %d: policy reincarnation (reference <- current policy, on-policy from now on)", step)

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)

    @watched("evaluation")
    def evaluate(self, step: int):
        """Held-out evaluation on rank 0 (the other ranks lend it their parameter shards meanwhile)."""
        if self.pipeline is not None:
            self.pipeline.wait()  # the reward's graders and a vLLM engine serve one caller at a time
        self._sync_engine()  # an engine with its own weights (vLLM) evaluates the current policy
        with self.dist.gathered(self.policy):
            if not self.dist.is_main:
                return None
            self._eval_sets = self._eval_sets or evaluation.build_eval_sets(self.config)
            report = evaluation.evaluate_during_training(self.config, self.engine, self.tokenizer, self._eval_sets,
                                                         self.reward, step, self.run_dir)
        self._log({"type": "eval", "step": step, "rollouts/total": self.state.rollouts_total,
                   "tokens/total": self.state.tokens_total, **report.metrics(prefix="eval")})
        self.eval_history.append((step, report))
        self.hacking.observe_eval(step, pass_at_1_by_benchmark(report))
        return report

    @watched("checkpoint")
    def save(self) -> Path:
        phase = self.schedule.plan(max(self.state.step, 1)).phase
        training = self._training_state()
        path = checkpoint.save_checkpoint(self.run_dir, self.state.step,
                                          lambda directory: checkpoint.write_training_state(directory, training, phase),
                                          keep=self.config.checkpoint.keep, dist=self.dist)
        self._saved_step = self.state.step
        return path

    def request_stop(self) -> None:
        """Stop at the next step boundary with a checkpoint, as the first Ctrl-C does (e.g. from `on_step_end`)."""
        self._stop.request()

    @watched("collective")
    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it at the same points); once true it
        stays true without further collectives."""
        if not self._stop_agreed:
            self._stop_agreed = self.dist.all_reduce([float(self._stop.requested)], op="max")[0] > 0
        return self._stop_agreed

    def train(self) -> dict[str, Any]:
        """Run the remaining steps; the first Ctrl-C ends the run after the current step with a checkpoint
        (`interrupted`), a second raises KeyboardInterrupt at once (interrupt.py)."""
        with self._stop, stopping_on_stall(self, lambda line: resume_hint(self, line)):
            return self._train()

    def _train(self) -> dict[str, Any]:
        cfg = self.config
        start_step = self.state.step + 1
        if start_step == 1 and cfg.eval.before_training and cfg.eval.benchmarks:
            self.evaluate(0)
        progress = tqdm(range(start_step, cfg.train.steps + 1), initial=start_step - 1, total=cfg.train.steps,
                        desc="train", disable=not (cfg.logging.progress and self.dist.is_main), dynamic_ncols=True)
        record: dict[str, Any] = {}
        for step in progress:
            if self.stop_requested():
                break
            record = self.train_step(step)
            self._watch_reincarnation(step, self.schedule.plan(step), record)
            if self.pipeline is not None and cfg.rollout.max_staleness == 0 and not self.stop_requested():
                self._launch_generation(step + 1)  # after the update (and any reincarnation decision): no overlap
            self._log(record)
            self._log(self.ledger)
            alarm = self.dist.broadcast_object(self.hacking.alarm)  # rank 0's monitor decides for every rank
            if self.dist.is_main:
                if alarm is not None:
                    self._log(alarm.event())
                metrics.report_step(record, cfg.train.steps, progress if cfg.logging.progress else None, alarm)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps and not self.stop_requested():
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
        if self.stop_requested():  # Ctrl-C: keep the finished steps, skip the final evaluation
            self.interrupted = True
            if self.state.step > 0 and self._saved_step != self.state.step:
                self.save()
            return record
        if cfg.checkpoint.save_final:
            self.save()
        if cfg.eval.after_training and cfg.eval.benchmarks:
            self.evaluate(self.state.step)
        return record

    @watched("weight_sync")
    def _sync_engine(self) -> None:
        """Push the policy's weights into an engine holding its own copy (vLLM), once per weight change."""
        if self._engine_weights_step != self.state.step:
            self.engine.update_weights(self.policy)
            self._engine_weights_step = self.state.step
            if self.sync_check is not None and self.config.rollout.engine == "vllm":  # every rank: its own engine
                self.sync_check.check_engine("vLLM engine", self.engine.response_logprobs, self.policy, self.device,
                                             self._max_over_ranks)

    def close(self) -> None:
        with self.watchdog.watch("shutdown"):  # a close stuck in a collective or a grader is watched too
            self._close()

    def _close(self) -> None:
        # the metrics file, the audit grader's and the reward's verifier processes, a vLLM engine's memory
        if self.pipeline is not None and self.watchdog.stall is None:  # a stalled job is never waited for
            try:
                self.pipeline.wait()  # a job still generating must not outlive the engine and the graders
            except RuntimeError as error:
                logger.warning("%s", error)
        for owner in (self.metrics, self.hacking, self.reward, self.engine):
            getattr(owner, "close", lambda: None)()
        self.dist.close()


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
    if trainer.interrupted:
        if trainer.dist.is_main:
            print(f"\n{resume_hint(trainer, f'stopped after step {trainer.state.step} of {config.train.steps}')}",
                  file=sys.stderr)
        return trainer
    if trainer.dist.is_main:
        report_before_after(trainer.eval_history, trainer.run_dir, trainer.state.rollouts_total)
        if trainer.stop_reason is not None:
            print(f"\n{trainer.stop_reason}", file=sys.stderr)
        print(f"run directory: {trainer.run_dir}")
    return trainer


def resume_hint(trainer: Trainer, what: str) -> str:
    """One line: what happened, the checkpoint a resume continues from, and the command that does it."""
    latest = checkpoint.latest_checkpoint(trainer.run_dir)
    if latest is None:
        return f"{what}: no checkpoint was saved, so there is nothing to resume; start again with `remix-rft train`"
    launcher = "torchrun <same options> -m remix_rft.cli train" if trainer.dist.active else "remix-rft train"
    return f"{what}: checkpoint {latest}; resume with: {launcher} --resume {trainer.run_dir}"
