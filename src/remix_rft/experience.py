"""Experience of one step: rollout groups from scored responses, the mixed fresh + replayed batch, the log-prob
passes without grad (pi_k, base reference, precedent, critic values) and the advantages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from remix_rft import algos
from remix_rft.batching import TokenBatch, collate, token_logprobs, token_values
from remix_rft.buffer import RolloutGroup
from remix_rft.config import Config
from remix_rft.data.types import Example
from remix_rft.logprobs import Truncation, sampling_truncation
from remix_rft.models import autocast_context
from remix_rft.references import AdapterReferences, FrozenReferences, kl_term
from remix_rft.rewards import GRADING_PROBLEMS, summarise_scores
from remix_rft.schedule import StepPlan

logger = logging.getLogger(__name__)

# advantage estimators that need the critic's values, so they run on every training batch (PPO)
CRITIC_ESTIMATORS = {"gae"}


@dataclass
class StepBatch:
    """The mixed training batch of one step: fresh responses first, then replayed ones."""

    tokens: TokenBatch
    behaviour_logp: torch.Tensor  # [B, R] log-probs under the policy that generated each response
    rewards: torch.Tensor  # [B]
    sequence_advantages: torch.Tensor  # [B] GRPO group advantages (from generation time for replayed groups)
    is_replay: torch.Tensor  # [B] bool
    versions: torch.Tensor  # [B] step whose policy generated the response
    proximal_logp: torch.Tensor | None = None  # [B, R] pi_k, the pre-update policy
    reference_logp: torch.Tensor | None = None
    precedent_logp: torch.Tensor | None = None
    advantages: torch.Tensor | None = None  # [B, R]
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    # the trainer's log-probs of the responses under the policy that generated them (replayed rows: stored at
    # generation time; fresh rows: filled with pi_k); the sampler-trainer mismatch is behaviour_logp vs these
    trainer_behaviour_logp: torch.Tensor | None = None
    # [B, R] weights multiplying the token losses: TIS / MIS, times the mismatch mask and the truncation mask
    is_weights: torch.Tensor | None = None
    # [B, R] bool: tokens outside the generating policy's own top-p / top-k set (the trainer's view): replayed rows
    # bring theirs from the buffer, fresh rows get theirs in the step's log-prob pass (None: no truncation)
    generation_cut: torch.Tensor | None = None
    # [B, R] the sampler's entropy at each token of the fresh rows whose engine recorded it (0 elsewhere); None: none
    sampler_entropy: torch.Tensor | None = None


@dataclass
class FreshRollouts:
    """A step's fresh data on this rank: training-set indices of its prompts, their rollouts (grouped by prompt,
    `prompt_index` into `indices`), each rollout's example and score, and the generation / scoring wall times."""

    indices: list[int]
    rollouts: list
    examples: list[Example]
    scores: list
    times: dict[str, float] = field(default_factory=dict)
    # the version (step) of the weights that generated each prompt group; None: this step's (synchronous generation)
    versions: list[int] | None = None
    # per rollout: the trainer's log-probs of its tokens under the weights that generated it, when those are not the
    # ones the step starts from (pipelined generation, rollout/pipeline.py); None: computed in the step's own pass
    trainer_logprobs: list[torch.Tensor] | None = None

    def extend(self, other: FreshRollouts) -> FreshRollouts:
        """These prompt groups followed by `other`'s (its rollouts' prompt_index shifted past ours)."""
        offset = len(self.indices)
        shifted = [replace(r, prompt_index=r.prompt_index + offset) for r in other.rollouts]

        def versions(fresh: FreshRollouts) -> list[int | None]:
            return fresh.versions if fresh.versions is not None else [None] * len(fresh.indices)

        def logprobs(fresh: FreshRollouts) -> list[torch.Tensor | None]:
            return fresh.trainer_logprobs if fresh.trainer_logprobs is not None else [None] * len(fresh.rollouts)

        return FreshRollouts(self.indices + other.indices, self.rollouts + shifted, self.examples + other.examples,
                             self.scores + other.scores,
                             {k: self.times.get(k, 0.0) + other.times.get(k, 0.0) for k in {*self.times, *other.times}},
                             versions(self) + versions(other), logprobs(self) + logprobs(other))


def make_groups(config: Config, step: int, indices: list[int], examples: Sequence[Example], rollouts,
                scores, versions: Sequence[int | None] | None = None,
                trainer_logprobs: Sequence[torch.Tensor | None] | None = None) -> list[RolloutGroup]:
    """One RolloutGroup per prompt (`samples_per_prompt` consecutive rollouts), with its sequence advantages.

    `versions` (per group) and `trainer_logprobs` (per rollout) describe responses generated by older weights than
    the step's (pipelined generation); None entries mean this step's weights."""
    group_size = config.train.samples_per_prompt
    rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
    group_ids = torch.tensor([r.prompt_index for r in rollouts])
    if config.advantage_estimator in CRITIC_ESTIMATORS:
        seq_adv = torch.zeros_like(rewards)  # recomputed with the current critic at every step that uses it
    else:
        # sequence-level estimators (grpo, drgrpo, registered variants) run once, at generation time: a
        # replayed group keeps the advantage it was given then (METHOD.md section 1)
        estimator = algos.get_advantage_estimator(config.advantage_estimator)
        seq_adv, _ = estimator(rewards=rewards, mask=torch.ones(len(rewards), 1), group_ids=group_ids,
                               eps=config.algorithm.grpo_eps)
        seq_adv = seq_adv[:, 0]
    groups = []
    for g, index in enumerate(indices):
        members = range(g * group_size, (g + 1) * group_size)
        version = versions[g] if versions is not None and versions[g] is not None else step
        trainer = None
        if version != step:  # the generating weights' own log-probs: the behaviour (recompute) or mismatch reference
            if trainer_logprobs is None or any(trainer_logprobs[i] is None for i in members):
                raise ValueError(f"prompt group {g} was generated by version {version} at step {step} without the "
                                 "trainer's log-probs under its weights")
            trainer = [trainer_logprobs[i].float().cpu() for i in members]
        groups.append(RolloutGroup(
            version=version, trainer_logprobs=trainer,
            prompt_ids=list(rollouts[members[0]].prompt_ids),
            response_ids=[list(rollouts[i].response_ids) for i in members],
            behaviour_logprobs=[torch.tensor(rollouts[i].logprobs, dtype=torch.float32) for i in members],
            sampler_entropies=None if any(rollouts[i].entropies is None for i in members)
            else [rollouts[i].entropies for i in members],
            rewards=rewards[list(members)].clone(),
            advantages=seq_adv[list(members)].clone(),
            meta={"example_id": examples[index].id, "index": index},
        ))
    return groups


def assemble(fresh: list[RolloutGroup], replay: list[RolloutGroup], pad_id: int, device: torch.device) -> StepBatch:
    """The step's batch: every response of the fresh groups, then of the replayed groups."""
    prompts, responses, behaviour, rewards, advantages, is_replay, versions = [], [], [], [], [], [], []
    trainer_behaviour, cut = [], []
    for groups, replayed in ((fresh, False), (replay, True)):
        for group in groups:
            for i, response in enumerate(group.response_ids):
                prompts.append(group.prompt_ids)
                responses.append(response)
                behaviour.append(group.behaviour_logprobs[i])
                trainer_behaviour.append(group.behaviour_logprobs[i] if group.trainer_logprobs is None
                                         else group.trainer_logprobs[i])
                rewards.append(float(group.rewards[i]))
                advantages.append(float(group.advantages[i]))
                is_replay.append(replayed)
                versions.append(group.version)
                cut.append(None if group.cut_tokens is None else group.cut_tokens[i])
    tokens = collate(prompts, responses, pad_id).to(device)
    behaviour_logp = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
    trainer_logp = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
    for row, (values, trainer_values) in enumerate(zip(behaviour, trainer_behaviour)):
        behaviour_logp[row, :len(values)] = values
        trainer_logp[row, :len(values)] = trainer_values
    sampler_entropy = None
    if any(group.sampler_entropies is not None for group in fresh):
        sampler_entropy = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
        row = 0
        for group in fresh:
            for i, response in enumerate(group.response_ids):
                if group.sampler_entropies is not None:
                    sampler_entropy[row, :len(response)] = group.sampler_entropies[i]
                row += 1
        sampler_entropy = sampler_entropy.to(device)
    generation_cut = None
    if any(flags is not None for flags in cut):
        generation_cut = torch.zeros(tokens.response_ids.shape, dtype=torch.bool)
        for row, flags in enumerate(cut):
            if flags is not None:
                generation_cut[row, :len(flags)] = flags
        generation_cut = generation_cut.to(device)
    return StepBatch(tokens=tokens, behaviour_logp=behaviour_logp.to(device), generation_cut=generation_cut,
                     sampler_entropy=sampler_entropy,
                     trainer_behaviour_logp=trainer_logp.to(device),
                     rewards=torch.tensor(rewards, device=device),
                     sequence_advantages=torch.tensor(advantages, device=device),
                     is_replay=torch.tensor(is_replay, device=device),
                     versions=torch.tensor(versions, device=device))


def store_behaviour(groups: list[RolloutGroup], logp: torch.Tensor, attribute: str = "behaviour_logprobs") -> None:
    """Write the batch's log-probs of the fresh rows back into their groups' `attribute` (fresh rows come first)."""
    row = 0
    for group in groups:
        if getattr(group, attribute) is None:
            setattr(group, attribute, [None] * group.num_responses)
        for i, response in enumerate(group.response_ids):
            getattr(group, attribute)[i] = logp[row, :len(response)].detach().cpu().clone()
            row += 1


def keep_logprobs(config: Config, groups: list[RolloutGroup], batch: StepBatch) -> None:
    """Store on the fresh groups the log-probs they carry when replayed. recompute: the trainer's behaviour
    log-probs (what the groups were trained with as fresh data); engine: the engine's log-probs are the behaviour
    ones and stay, the trainer's are kept beside them for the mismatch correction. With top-p / top-k, the tokens
    outside the generating policy's own set go with them (`cut_tokens`), so they stay out when replayed."""
    if batch.generation_cut is not None:
        row = 0
        for group in groups:
            group.cut_tokens = [batch.generation_cut[row + i, :len(r)].cpu().clone()
                                for i, r in enumerate(group.response_ids)]
            row += group.num_responses
    if config.rollout.behaviour_logprobs == "recompute":
        store_behaviour(groups, batch.behaviour_logp)
    else:
        store_behaviour(groups, batch.trainer_behaviour_logp, "trainer_logprobs")


@torch.no_grad()
def logprob_passes(config: Config, batch: StepBatch, plan: StepPlan, policy: torch.nn.Module,
                   references: FrozenReferences | AdapterReferences, critic: torch.nn.Module | None,
                   gathered: Callable[[torch.nn.Module | None], contextlib.AbstractContextManager] = (
                       lambda model: contextlib.nullcontext()), measure_precedent: bool = False,
                   sampler_pi_k: bool = False) -> dict[str, float]:
    """Fill the batch's pi_k, reference and precedent log-probs and the critic's values; return diagnostics.

    `gathered(model)` gives a sharded model its full parameters for the passes (see `Distributed.gathered`).
    `measure_precedent`: log kl/precedent even while the KL-Convex weight is 1 (the loss then does not use it).
    `sampler_pi_k` (rollout.reuse_sampler_logprobs, checked by the trainer): this step's fresh rows take the HF
    sampler's log-probs and entropies as pi_k's, so only replayed rows go through the pi_k pass."""
    tokens = batch.tokens
    mask = tokens.response_mask
    temperature = config.rollout.temperature
    metrics: dict[str, float] = {}
    truncation = rollout_truncation(config)
    fresh = ~batch.is_replay
    current = fresh & (batch.versions == plan.step)
    policy.eval()
    with autocast_context(tokens.input_ids.device, config.model.bf16):
        if sampler_pi_k:
            batch.proximal_logp, entropy = sampler_proximal(config, batch, current, plan, policy, gathered)
        else:
            with gathered(policy):
                proximal, entropy = token_logprobs(policy, tokens, temperature, with_entropy=True,
                                                   max_tokens=config.train.micro_batch_tokens,
                                                   chunk_tokens=config.train.logprob_chunk_tokens, truncation=truncation,
                                                   share_prompts=config.train.shared_prompt_forward)
            batch.proximal_logp = proximal.float()
        metrics["entropy"] = float(algos.masked_mean(entropy.float(), mask))
        metrics["logprob/pi_k_from_sampler"] = float(sampler_pi_k)
        cut_off = None
        if truncation is not None:
            cut_off = outside_truncation(batch)
        # the trainer's log-probs under each fresh response's generating weights: pi_k's for this step's own, the
        # snapshot's (already in trainer_behaviour_logp) for responses generated a version earlier (pipelined)
        batch.trainer_behaviour_logp[current] = batch.proximal_logp[current]
        if cut_off is not None:  # a pipelined response's token outside its generating snapshot's own truncated set
            outside_pi_k = cut_off
            stale_out = torch.isneginf(batch.trainer_behaviour_logp) & (mask > 0) & fresh[:, None]
            if bool(stale_out.any()):
                batch.trainer_behaviour_logp = torch.where(stale_out, batch.behaviour_logp, batch.trainer_behaviour_logp)
                cut_off = cut_off | stale_out
            # a fresh row's cut is its generating policy's: pi_k's own set for this step's rows, the snapshot's for a
            # pipelined row; a replayed row keeps the one stored with it. Every row also leaves the loss where the
            # current pi_k's set leaves a token out (cut_off), but that is no sampler/trainer disagreement
            generation = (outside_pi_k & current[:, None]) | stale_out
            if batch.generation_cut is not None:
                generation = generation | (batch.generation_cut & batch.is_replay[:, None])
                cut_off = cut_off | batch.generation_cut
            batch.generation_cut = generation
            metrics.update(share_by_kind("truncation/", "masked_share", cut_off, batch))
        if not sampler_pi_k:  # (taken from the sampler, pi_k has no gap to it: the trainer checks it on step 1)
            metrics.update(sampler_trainer_gap(config, batch, fresh))
        if config.rollout.behaviour_logprobs == "recompute":
            # fresh data: behaviour = the generating weights as the trainer computes them; for this step's own that
            # is pi_k (clip centre exactly 1), for a pipelined response pi_{k-1} (centre pi_k / pi_{k-1}, as replay)
            batch.behaviour_logp[fresh] = batch.trainer_behaviour_logp[fresh]
        else:
            metrics.update(mismatch_correction(config, batch, current, batch.generation_cut))
        if cut_off is not None and bool(cut_off.any()):
            kept = (~cut_off).float()
            batch.is_weights = kept * (mask if batch.is_weights is None else batch.is_weights)
        if config.remix.replay_m2_threshold is not None and plan.replay_prompts > 0:
            metrics.update(replay_second_moment_mask(batch, config.remix.replay_m2_threshold))
        # the KL anchors stay on the full distribution: KL(truncated pi_theta || pi_ref) is finite, while a truncated
        # reference would make it infinite on every token the policy samples outside the reference's own top-p set
        measure = measure_precedent and references.lagged is not None
        budget = config.train.micro_batch_tokens
        kl_logp = batch.proximal_logp
        logs_kl = references.reference is not None or (references.lagged is not None and (
            measure or (references.uses_kl and plan.kl_convex_weight < 1.0)))
        if truncation is not None and logs_kl:
            # the KL metrics (and the adaptive trigger reading kl/precedent) compare pi_k with untruncated references,
            # so they take pi_k's untruncated log-probs too: truncated against untruncated reads a floor where the
            # true KL is 0 (0.0054 at step 1 with top_p = 0.9). One more forward pass, under top-p / top-k only
            with gathered(policy):
                full, _ = token_logprobs(policy, tokens, temperature, max_tokens=budget,
                                         chunk_tokens=config.train.logprob_chunk_tokens,
                                         share_prompts=config.train.shared_prompt_forward)
            kl_logp = full.float()
        if references.reference is not None:
            batch.reference_logp = references.reference_logprobs(tokens, temperature, budget, gathered)
            metrics["kl/base"] = float(algos.masked_mean(algos.kl_penalty(kl_logp, batch.reference_logp, "k3"), mask))
        if references.uses_kl and (plan.kl_convex_weight < 1.0 or measure):
            precedent = references.precedent_logprobs(tokens, temperature, budget, batch.proximal_logp, gathered)
            if plan.kl_convex_weight < 1.0:
                batch.precedent_logp = precedent
            if references.lagged is not None:  # a proximal precedent is pi_k itself: its KL here is 0 by construction
                metrics["kl/precedent"] = float(algos.masked_mean(algos.kl_penalty(kl_logp, precedent, "k3"), mask))
        if critic is not None:
            critic.eval()
            with gathered(critic):
                batch.old_values = token_values(critic, tokens, max_tokens=budget).float()
    policy.train()
    return metrics


class SamplerPiK:
    """rollout.reuse_sampler_logprobs for a run: whether this step's fresh rows take the sampler's log-probs as pi_k's.
    The run's first step still runs the pass and measures the sampler-trainer gap (`check`): above the bound
    (rollout.sync_check_bound, else 1e-3 float32 / 0.15 bf16) auto turns the reuse off for the run, true warns. The
    decision is saved in checkpoints, so a resumed run computes what the uninterrupted one did."""

    def __init__(self, config: Config) -> None:
        from remix_rft.config import reuses_sampler_logprobs
        from remix_rft.rollout.sync_check import DEFAULT_BOUNDS

        self.enabled, self.why = reuses_sampler_logprobs(config)
        self.forced = config.rollout.reuse_sampler_logprobs is True
        self.bound = config.rollout.sync_check_bound or DEFAULT_BOUNDS["bfloat16" if config.model.bf16 else "float32"]
        self.checked = False

    @property
    def active(self) -> bool:
        return self.enabled and self.checked

    def state_dict(self) -> dict[str, Any]:  # a resumed run keeps the first step's decision (and so its numbers)
        return {"enabled": self.enabled, "checked": self.checked, "why": self.why}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.enabled and state.get("checked"):  # the config may have turned it off since; it cannot turn it on
            self.enabled, self.checked, self.why = bool(state["enabled"]), True, str(state["why"])

    def after_pass(self, pass_metrics: dict[str, float], dist) -> None:
        """After a step's log-prob passes: on the first (a full pass), decide from its gap, the largest over ranks
        (`dist.all_reduce`), so that every rank decides alike; logged on rank 0."""
        if not self.enabled or self.checked:
            return
        gap_mean, gap_max = dist.all_reduce([pass_metrics["logprob_mismatch/mean"],
                                             pass_metrics["logprob_mismatch/max"]], op="max")
        line = self.check(gap_mean, gap_max)
        if dist.is_main:
            (logger.info if self.enabled and gap_mean <= self.bound else logger.warning)("%s", line)

    def check(self, gap_mean: float, gap_max: float) -> str:
        """Decide from the first step's gap (mean and max |sampler - trainer| log-prob); the line to log."""
        self.checked = True
        measured = f"sampler vs trainer log-probs on step 1 of this process: mean gap {gap_mean:.2e}, max {gap_max:.2e}"
        if gap_mean <= self.bound:
            return f"{self.why} ({measured}, bound {self.bound:g}): no pi_k pass for this step's fresh responses"
        if not self.forced:
            self.enabled = False
            self.why = f"off: the {measured} exceeds {self.bound:g}"
            return f"rollout.reuse_sampler_logprobs=auto turned {self.why}; pi_k is recomputed"
        return f"rollout.reuse_sampler_logprobs=true although the {measured} exceeds {self.bound:g}"


def sampler_trainer_gap(config: Config, batch: StepBatch, fresh: torch.Tensor) -> dict[str, float]:
    """Sampler vs trainer log-probs of the fresh tokens (LESSONS #10): a non-zero gap makes "on-policy" off-policy."""
    mask = batch.tokens.response_mask[fresh]
    log_ratio = batch.trainer_behaviour_logp[fresh] - batch.behaviour_logp[fresh]
    gap = log_ratio.abs() * mask
    # tokens whose ratio pi_k(trainer) / pi_k(sampler) already lies outside the clip range before any update:
    # with recompute they are re-centred, with engine log-probs they are clipped from the first minibatch
    outside = ((log_ratio.exp() - 1).abs() > config.algorithm.clip_eps).float()
    return {"logprob_mismatch/max": float(gap.max()) if gap.numel() else 0.0,
            "logprob_mismatch/mean": float(algos.masked_mean(gap, mask)),
            "logprob_mismatch/outside_clip_share": float(algos.masked_mean(outside, mask))}


def sampler_proximal(config: Config, batch: StepBatch, current: torch.Tensor, plan: StepPlan,
                     policy: torch.nn.Module, gathered: Callable[[torch.nn.Module | None],
                                                                 contextlib.AbstractContextManager]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_k's log-probs and entropies [B, R]: the sampler's for this step's fresh rows (`current`), a pass for the
    others (replayed). Every rank enters the gathered block when any rank may hold replayed rows, as it requires."""
    if batch.sampler_entropy is None and bool(current.any()):
        raise RuntimeError("rollout.reuse_sampler_logprobs: the engine recorded no entropies (HFRolloutEngine "
                           "with_entropy=True)")
    proximal = batch.behaviour_logp.clone()
    entropy = torch.zeros_like(proximal) if batch.sampler_entropy is None else batch.sampler_entropy.clone()
    if plan.replay_prompts == 0 and bool(current.all()):
        return proximal, entropy
    rows = (~current).nonzero().squeeze(-1)
    with gathered(policy):
        if len(rows):
            logp, row_entropy = token_logprobs(policy, batch.tokens.select(rows), config.rollout.temperature,
                                               with_entropy=True, max_tokens=config.train.micro_batch_tokens,
                                               chunk_tokens=config.train.logprob_chunk_tokens,
                                               share_prompts=config.train.shared_prompt_forward)
            width = proximal.shape[1]  # select() drops the columns that are padding in every selected row
            proximal[rows] = torch.nn.functional.pad(logp.float(), (0, width - logp.shape[1]))
            entropy[rows] = torch.nn.functional.pad(row_entropy.float(), (0, width - row_entropy.shape[1]))
    return proximal, entropy


@torch.no_grad()
def generating_logprobs(config: Config, model: torch.nn.Module, rollouts, pad_id: int,
                        device: torch.device) -> list[torch.Tensor]:
    """The trainer's log-probs of each rollout's tokens under `model`, the weights that generated them (a pipelined
    job's snapshot), computed as the step's own pass computes pi_k's: same chunking, precision and truncation."""
    tokens = collate([r.prompt_ids for r in rollouts], [r.response_ids for r in rollouts], pad_id).to(device)
    with autocast_context(device, config.model.bf16):
        logp, _ = token_logprobs(model, tokens, config.rollout.temperature, max_tokens=config.train.micro_batch_tokens,
                                 chunk_tokens=config.train.logprob_chunk_tokens, truncation=rollout_truncation(config),
                                 share_prompts=config.train.shared_prompt_forward)
    return [logp[row, :len(r.response_ids)].float().cpu() for row, r in enumerate(rollouts)]


def rollout_truncation(config: Config) -> Truncation | None:
    """The sampler's top-k / top-p truncation, which pi_k's pass and the update's forward apply too (None: off)."""
    return sampling_truncation(config.rollout.top_k, config.rollout.top_p)


def outside_truncation(batch: StepBatch) -> torch.Tensor:
    """Response tokens outside pi_k's own truncated set (bool [B, R]): sampler and trainer numerics put them on
    either side of the top-p / top-k cut, so pi_k gives them log-prob -inf. They leave the loss (the caller zeroes
    their weight); their behaviour log-prob stands in for pi_k's so every later sum stays finite."""
    outside = torch.isneginf(batch.proximal_logp) & (batch.tokens.response_mask > 0)
    if bool(outside.any()):
        batch.proximal_logp = torch.where(outside, batch.behaviour_logp, batch.proximal_logp)
    return outside


def replay_second_moment_mask(batch: StepBatch, threshold: float) -> dict[str, float]:
    """remix.replay_m2_threshold: M2PO's mask over the replayed tokens, from log pi_k / mu (how stale each replayed
    token is before the update); a left-out token gets weight 0. Under torchrun M2 is each rank's, over its own
    replayed tokens. Both metrics exist on every rank (0 without replayed rows), so the ranks reduce the same keys."""
    mask = batch.tokens.response_mask
    replay_mask = mask * batch.is_replay[:, None].to(mask.dtype)
    if batch.is_weights is not None:  # tokens already rejected (a cut, a mask) have a stand-in ratio: leave them out
        replay_mask = replay_mask * (batch.is_weights > 0).to(mask.dtype)
    log_ratio = batch.proximal_logp - batch.behaviour_logp
    keep = algos.second_moment_mask(log_ratio, replay_mask, threshold)
    tokens = float(replay_mask.sum())
    weights = torch.where(batch.is_replay[:, None], keep.float(), torch.ones_like(keep, dtype=torch.float32))
    batch.is_weights = weights * (mask if batch.is_weights is None else batch.is_weights)
    return {"replay/m2": float(algos.masked_mean(log_ratio.float() ** 2, replay_mask)) if tokens else 0.0,
            "replay/m2_masked_share": float((replay_mask - keep).sum()) / tokens if tokens else 0.0}


def share_by_kind(prefix: str, name: str, flags: torch.Tensor, batch: StepBatch) -> dict[str, float]:
    """`prefix{,fresh_,replay_}name`: the share of response tokens (of all, fresh, replayed rows) with `flags` set."""
    mask = batch.tokens.response_mask
    out = {}
    for kind, rows in (("", torch.ones_like(batch.is_replay)), ("fresh_", ~batch.is_replay),
                       ("replay_", batch.is_replay)):
        if bool(rows.any()) and bool(mask[rows].any()):
            out[f"{prefix}{kind}{name}"] = float(algos.masked_mean(flags[rows].float(), mask[rows]))
    return out


def mismatch_correction(config: Config, batch: StepBatch, current: torch.Tensor | None = None,
                        cut: torch.Tensor | None = None) -> dict[str, float]:
    """Sampler (engine) vs trainer log-probs of the behaviour policy, by fresh / replayed data; with
    rollout.is_correction=tis|mis, the loss then uses the trainer's log-probs as behaviour and IS weights; with
    rollout.mismatch_mask, the mask's dropped tokens / sequences get weight 0 (the behaviour stays the engine's
    when it is the only correction)."""
    ro, mask = config.rollout, batch.tokens.response_mask
    fresh = ~batch.is_replay
    # rows generated by pi_k itself (default: every fresh row); pipelined ones carry their generating weights' own
    own = fresh if current is None else current
    batch.trainer_behaviour_logp[own] = batch.proximal_logp[own]
    gap = (batch.trainer_behaviour_logp - batch.behaviour_logp).abs()
    metrics: dict[str, float] = {}
    for kind, rows in (("fresh", fresh), ("replay", batch.is_replay)):
        if bool(rows.any()) and bool(mask[rows].any()):
            metrics[f"logprob_mismatch/{kind}_mean"] = float(algos.masked_mean(gap[rows], mask[rows]))
            metrics[f"logprob_mismatch/{kind}_max"] = float((gap[rows] * mask[rows]).max())
    if ro.is_correction == "none" and ro.mismatch_mask == "none":
        return metrics
    kinds = (("", torch.ones_like(fresh)), ("fresh_", fresh), ("replay_", batch.is_replay))
    trainer, sampler = batch.trainer_behaviour_logp, batch.behaviour_logp
    # a token outside the trainer's top-p / top-k set (`cut`) has trainer probability 0: its ratio is 0, which
    # rejects its sequence (geo_mean), its token (icepop) and zeroes the sequence-level IS product (verl's veto).
    # Its finite stand-in log-prob (the engine's) would read as perfect agreement
    ratio_trainer = trainer if cut is None else torch.where(cut, torch.full_like(trainer, float("-inf")), trainer)
    weights = mask.float()
    if ro.is_correction != "none":
        raw = algos.raw_is_weights(ratio_trainer, sampler, mask, ro.is_level)
        weights = algos.mismatch_is_weights(ratio_trainer, sampler, mask, ro.is_correction, ro.is_cap, ro.is_level)
        for kind, rows in kinds:
            stats = algos.is_weight_statistics(raw[rows], weights[rows], mask[rows])
            metrics.update({f"is_correction/{kind}{name}": value for name, value in stats.items()})
    if ro.mismatch_mask != "none":
        keep = algos.mismatch_mask(ratio_trainer, sampler, mask, ro.mismatch_mask, ro.mismatch_mask_low,
                                   ro.mismatch_mask_high)
        weights = weights * keep
        for kind, rows in kinds:
            stats = algos.mask_statistics(keep[rows], mask[rows])
            metrics.update({f"mismatch_mask/{kind}{name}": value for name, value in stats.items()})
    batch.is_weights = weights
    if ro.is_correction != "none":
        batch.behaviour_logp = trainer.clone()
    return metrics


def compute_advantages(config: Config, batch: StepBatch, plan: StepPlan,
                       reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """GRPO: each group's sequence advantage on every response token; PPO: GAE with the critic's values.

    `reduce_sum` sums statistics over data-parallel ranks: PPO whitens with the global batch's mean and std."""
    mask = batch.tokens.response_mask
    if config.advantage_estimator in CRITIC_ESTIMATORS:
        alg = config.algorithm
        token_rewards = algos.sequence_rewards_to_tokens(batch.rewards, mask)
        if alg.kl_in_reward and batch.reference_logp is not None:
            kl = kl_term(batch.proximal_logp, batch.reference_logp, batch.precedent_logp, plan.kl_convex_weight,
                         kind="k1")
            token_rewards = token_rewards - alg.kl_coef * kl * mask
        estimator = algos.get_advantage_estimator(config.advantage_estimator)
        advantages, returns = estimator(rewards=batch.rewards, mask=mask, values=batch.old_values,
                                        token_rewards=token_rewards, gamma=alg.gamma, lam=alg.gae_lambda)
        if alg.whiten_advantages:
            advantages = algos.masked_whiten(advantages, mask, reduce_sum=reduce_sum)
        batch.advantages, batch.returns = advantages * mask, returns
    else:
        batch.advantages = batch.sequence_advantages[:, None] * mask


def step_record(step: int, plan: StepPlan, rollouts, scores, batch: StepBatch, replay_groups: list[RolloutGroup],
                state: Any) -> dict[str, Any]:
    """The step's metrics about its data: rollouts, replay, rewards, lengths, verifier problems and the schedule.

    `state` holds the run's counters (`rollouts_total`, `tokens_total`) after this step."""
    lengths = torch.tensor([len(r.response_ids) for r in rollouts], dtype=torch.float32)
    score_summary = summarise_scores(scores)
    record: dict[str, Any] = {
        "type": "train", "step": step, "phase": plan.phase,
        "rollouts/step": len(rollouts), "rollouts/total": state.rollouts_total,
        "rollouts/replayed": int(batch.is_replay.sum()), "replay/groups": len(replay_groups),
        "replay/mean_age": (float(np.mean([step - g.version for g in replay_groups])) if replay_groups else 0.0),
        "tokens/step": sum(len(r.response_ids) for r in rollouts), "tokens/total": state.tokens_total,
        "reward/mean": float(torch.tensor([s.reward for s in scores]).mean()),
        "accuracy/train": float(np.mean([s.correct for s in scores])),
        "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
        "response_length/truncated_share": float(np.mean([r.finish_reason == "length" for r in rollouts])),
        "kl_convex/weight": plan.kl_convex_weight, "offpolicy_fraction": plan.offpolicy_fraction,
        "updates_per_batch": plan.updates_per_batch,
    }
    record.update({f"verifier/{k}": score_summary[k] for k in GRADING_PROBLEMS})
    return record
