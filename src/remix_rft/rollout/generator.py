"""Step 2 of a training step (trainer.py): the step's fresh responses, drawn, sampled and scored.

`RolloutGenerator` draws the step's prompts (past the prompt selector's skips, data.selection), pushes the policy's
weights into an engine that holds its own copy (vLLM, checked by rollout.sync_check), samples with per-step seeds
(the same on a resumed run) and scores the responses. It also runs DAPO's extra generation rounds
(train.dynamic_sampling) and pipelined generation (rollout.pipeline): the next step's job starts in the background
with a snapshot of the weights (pipeline.py holds the thread and the weight copy; this module says what a job does).
The trainer owns the training state; the generator reads the policy and the last trained step through callables.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from remix_rft import experience, informative, lora
from remix_rft.config import Config
from remix_rft.data.sampler import TrainingPrompts
from remix_rft.data.selection import PromptSelector
from remix_rft.distributed import Distributed
from remix_rft.experience import FreshRollouts
from remix_rft.logprobs import run_head_in_float32
from remix_rft.models import load_model
from remix_rft.rewards import RewardFunction, check_scores
from remix_rft.rollout import RolloutEngine, SamplingParams, build_engine, engine_options
from remix_rft.rollout.pipeline import RolloutPipeline, copy_weights
from remix_rft.rollout.sync_check import WeightSyncCheck
from remix_rft.schedule import ReMixSchedule, StepPlan
from remix_rft.watchdog import Watchdog, watched

__all__ = ["RolloutGenerator", "load_snapshot"]

logger = logging.getLogger(__name__)


def load_snapshot(config: Config, device: torch.device) -> torch.nn.Module:
    """A frozen float32 model of the policy's architecture (and adapters) for a pipelined job: `copy_weights` fills
    it with the weights the job generates with (the HF engine samples it; with vLLM it gives the trainer's log-probs
    of what vLLM sampled)."""
    cfg = config
    snapshot = load_model(cfg.model.name, dtype="float32").to(device).requires_grad_(False).eval()
    if cfg.model.lora.enabled:  # the same adapters, copied unmerged: W + BA rounded to bf16 is another policy
        lo = cfg.model.lora
        lora.inject(snapshot, lo.r, lo.alpha, lo.dropout, lo.peft_target_modules)
        snapshot.requires_grad_(False).eval()
    if cfg.model.bf16 and cfg.model.lm_head_compute_dtype == "float32":
        run_head_in_float32(snapshot)
    return snapshot


class RolloutGenerator:
    """Fresh, scored responses for a step: now (`generate`, `sample_dynamically`) or one step ahead (`launch`, then
    `take`). Its `watchdog` attribute is what `watched` phases run under."""

    def __init__(self, config: Config, dist: Distributed, tokenizer, prompts: TrainingPrompts,
                 reward: RewardFunction, engine: RolloutEngine, schedule: ReMixSchedule, watchdog: Watchdog,
                 policy: Callable[[], torch.nn.Module], trained_step: Callable[[], int]):
        cfg = self.config = config
        self.dist, self.device, self.pad_id = dist, dist.device, tokenizer.pad_token_id
        self.prompts, self.reward, self.engine, self.schedule = prompts, reward, engine, schedule
        self.watchdog = watchdog  # what its `watched` phases run under: the trainer's
        self.policy, self.trained_step = policy, trained_step  # the trainer's current policy and last finished step
        # rollout.sync_check: an engine with its own copy of the weights must score a probe as the trainer does
        self.sync_check = WeightSyncCheck(tokenizer, cfg.model.bf16, cfg.rollout.sync_check_bound,
                                          dist.rank) if cfg.rollout.sync_check else None
        # data.selection: one history on every rank (outcomes are gathered), so every rank draws the same prompts
        d = cfg.data
        self.selector = PromptSelector(cfg.train.seed, d.selection_skip_base, d.selection_max_skip,
                                       d.selection_revisit_after) if d.selection == "skip_uninformative" else None
        self._engine_weights_step: int | None = 0  # the step whose weights the engine holds (built from step 0's)
        self.pipeline = RolloutPipeline() if cfg.rollout.pipeline else None
        self.snapshot: torch.nn.Module | None = None  # the weights a pipelined job generates with
        self._generation_engine = engine  # what a pipelined job samples with: vLLM its own copy of the weights
        # vLLM without staleness samples its own weights and needs no trainer log-probs of older ones
        if self.pipeline is not None and (cfg.rollout.engine == "hf" or cfg.rollout.max_staleness >= 1):
            self.snapshot = load_snapshot(cfg, self.device)
            if cfg.rollout.engine == "hf":
                self._generation_engine = build_engine("hf", self.snapshot, tokenizer, **engine_options(cfg))

    def _sampling(self, step: int, salt: int = 0) -> SamplingParams:
        """The step's sampling settings; `salt` > 0 seeds an extra generation round of the same step apart."""
        ro = self.config.rollout
        seed = (self.config.train.seed * 1_000_003 + step) * self.dist.world_size + self.dist.rank
        seed += salt * 1_000_000_007
        return SamplingParams(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, seed=seed)

    def _draw_prompts(self, count: int) -> list[int]:
        """The next `count` training prompts of the run (the same on every rank), past the selector's skips."""
        if self.selector is None:
            return self.prompts.next(count)
        return self.selector.select(self.prompts.next, count)[0]

    def _score(self, indices: list[int], rollouts: list) -> tuple[list, list]:
        """Each response's example and its checked score (the reward is not called for no responses)."""
        examples = [self.prompts.examples[indices[r.prompt_index]] for r in rollouts]
        with self.watchdog.phase("scoring"):
            scores = check_scores(self.reward, self.reward.score([r.text for r in rollouts], examples), examples) \
                if rollouts else []
        return examples, scores

    def _max_over_ranks(self, value: float) -> float:
        return self.dist.all_reduce([value], op="max")[0]

    def observe(self, groups: list) -> None:
        """data.selection: the step's outcomes (which prompts' groups had differing rewards), every rank's in rank
        order, so that every rank keeps one history and draws the same prompts."""
        if self.selector is not None:
            for outcomes in self.dist.all_gather_object([(g.meta["index"], g.informative) for g in groups]):
                self.selector.observe(outcomes)

    def metrics(self) -> dict[str, Any]:
        """For the step's record: the selector's skipped prompts, and the last weight-sync check's probe gap."""
        out: dict[str, Any] = informative.selection_metrics(self.selector)
        if self.sync_check is not None and self.sync_check.last_gap is not None:
            out["sync/probe_gap"] = self.sync_check.last_gap
        return out

    @watched("weight_sync")
    def sync_engine(self) -> None:
        """Push the policy's weights into an engine holding its own copy (vLLM), once per weight change."""
        if self._engine_weights_step != self.trained_step():
            self.engine.update_weights(self.policy())
            self._engine_weights_step = self.trained_step()
            if self.sync_check is not None and self.config.rollout.engine == "vllm":  # every rank: its own engine
                self.sync_check.check_engine("vLLM engine", self.engine.response_logprobs, self.policy(),
                                             self.device, self._max_over_ranks)

    def generate(self, step: int, plan: StepPlan, prompts: int | None = None, share: tuple[int, int] | None = None,
                 salt: int = 0) -> FreshRollouts:
        """Fresh responses for this rank's share of the step's fresh prompts (or of `prompts` of them; `share`: this
        rank's slice of them, which may be empty: every rank still takes part in the weight gathers), scored.
        `salt` > 0: an extra round of the step, sampled apart from the first."""
        count = plan.fresh_prompts if prompts is None else prompts
        start, stop = share if share is not None else self.dist.share(count)
        indices = self._draw_prompts(count)[start:stop]
        t0 = time.perf_counter()
        self.sync_engine()  # every rank: a sharded parameter is gathered one tensor at a time
        t_sync = time.perf_counter()
        with self.dist.gathered(self.policy()):
            rollouts = self.engine.generate([self.prompts.prompt(i) for i in indices],
                                            self.config.train.samples_per_prompt, self._sampling(step, salt)) \
                if indices else []
        t1 = time.perf_counter()
        examples, scores = self._score(indices, rollouts)
        times = {"weight_sync": t_sync - t0, "generation": t1 - t_sync, "scoring": time.perf_counter() - t1}
        return FreshRollouts(indices, rollouts, examples, scores, times)

    def sample_dynamically(self, step: int, plan: StepPlan, fresh: FreshRollouts) -> FreshRollouts:
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

    # ---------------------------------------------------------------------------------- pipelined generation
    @watched("weight_sync")
    def launch(self, step: int) -> None:
        """Draw step `step`'s prompts and generate them in the background with a snapshot of the current weights
        (version = the next step to train: what synchronous generation at that point would tag them)."""
        if step > self.config.train.steps:
            return
        version = self.trained_step() + 1
        plan = self.schedule.plan(step)
        start, stop = self.dist.share(plan.fresh_prompts)
        indices = self._draw_prompts(plan.fresh_prompts)[start:stop]
        t0 = time.perf_counter()
        stale = version != step  # the trainer's log-probs under these weights are needed at `step`
        if self.config.rollout.engine == "hf" or stale:
            copy_weights(self.policy(), self.snapshot)  # every rank: a sharded parameter is gathered one at a time
            if self.sync_check is not None:  # the sharded policy's own forward: no whole-model unshard for a probe
                self.sync_check.verify("pipeline snapshot", self.sync_check.logprobs(self.snapshot, self.device),
                                       self.sync_check.logprobs(self.policy(), self.device), self._max_over_ranks)
        if self.config.rollout.engine != "hf":
            self.sync_engine()  # vLLM samples its own copy: the same weights
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
        examples, scores = self._score(indices, rollouts)
        t2 = time.perf_counter()
        trainer_logprobs = experience.generating_logprobs(cfg, self.snapshot, rollouts, self.pad_id, self.device) \
            if stale else None
        times = {"weight_sync": sync, "generation": t1 - t0, "scoring": t2 - t1,
                 "trainer_logprobs": time.perf_counter() - t2}
        return FreshRollouts(indices, rollouts, examples, scores, times, [version] * len(indices), trainer_logprobs)

    def take(self, step: int, plan: StepPlan) -> FreshRollouts | None:
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

    def close(self) -> None:
        """Wait for a pipelined job still generating: it must not outlive the engine and the graders (a stalled job
        is never waited for)."""
        if self.pipeline is not None and self.watchdog.stall is None:
            try:
                self.pipeline.wait()
            except RuntimeError as error:
                logger.warning("%s", error)
