"""Experience of one step: rollout groups from scored responses, the mixed fresh + replayed batch, the log-prob
passes without grad (pi_k, base reference, precedent, critic values) and the advantages."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from remix_rft import algos
from remix_rft.batching import TokenBatch, collate, token_logprobs, token_values
from remix_rft.buffer import RolloutGroup
from remix_rft.config import Config
from remix_rft.data.types import Example
from remix_rft.models import autocast_context
from remix_rft.references import AdapterReferences, FrozenReferences, kl_term
from remix_rft.rewards import GRADING_PROBLEMS, summarise_scores
from remix_rft.schedule import StepPlan

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
    is_weights: torch.Tensor | None = None  # [B, R] TIS / MIS weights multiplying the token losses


@dataclass
class FreshRollouts:
    """A step's fresh data on this rank: training-set indices of its prompts, their rollouts (grouped by prompt,
    `prompt_index` into `indices`), each rollout's example and score, and the generation / scoring wall times."""

    indices: list[int]
    rollouts: list
    examples: list[Example]
    scores: list
    times: dict[str, float] = field(default_factory=dict)


def make_groups(config: Config, step: int, indices: list[int], examples: Sequence[Example], rollouts,
                scores) -> list[RolloutGroup]:
    """One RolloutGroup per prompt (`samples_per_prompt` consecutive rollouts), with its sequence advantages."""
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
        groups.append(RolloutGroup(
            version=step,
            prompt_ids=list(rollouts[members[0]].prompt_ids),
            response_ids=[list(rollouts[i].response_ids) for i in members],
            behaviour_logprobs=[torch.tensor(rollouts[i].logprobs, dtype=torch.float32) for i in members],
            rewards=rewards[list(members)].clone(),
            advantages=seq_adv[list(members)].clone(),
            meta={"example_id": examples[index].id, "index": index},
        ))
    return groups


def assemble(fresh: list[RolloutGroup], replay: list[RolloutGroup], pad_id: int, device: torch.device) -> StepBatch:
    """The step's batch: every response of the fresh groups, then of the replayed groups."""
    prompts, responses, behaviour, rewards, advantages, is_replay, versions = [], [], [], [], [], [], []
    trainer_behaviour = []
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
    tokens = collate(prompts, responses, pad_id).to(device)
    behaviour_logp = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
    trainer_logp = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
    for row, (values, trainer_values) in enumerate(zip(behaviour, trainer_behaviour)):
        behaviour_logp[row, :len(values)] = values
        trainer_logp[row, :len(values)] = trainer_values
    return StepBatch(tokens=tokens, behaviour_logp=behaviour_logp.to(device),
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
    ones and stay, the trainer's are kept beside them for the mismatch correction."""
    if config.rollout.behaviour_logprobs == "recompute":
        store_behaviour(groups, batch.behaviour_logp)
    else:
        store_behaviour(groups, batch.proximal_logp, "trainer_logprobs")


@torch.no_grad()
def logprob_passes(config: Config, batch: StepBatch, plan: StepPlan, policy: torch.nn.Module,
                   references: FrozenReferences | AdapterReferences, critic: torch.nn.Module | None,
                   gathered: Callable[[torch.nn.Module | None], contextlib.AbstractContextManager] = (
                       lambda model: contextlib.nullcontext()), measure_precedent: bool = False) -> dict[str, float]:
    """Fill the batch's pi_k, reference and precedent log-probs and the critic's values; return diagnostics.

    `gathered(model)` gives a sharded model its full parameters for the passes (see `Distributed.gathered`).
    `measure_precedent`: log kl/precedent even while the KL-Convex weight is 1 (the loss then does not use it)."""
    tokens = batch.tokens
    mask = tokens.response_mask
    temperature = config.rollout.temperature
    budget = config.train.micro_batch_tokens
    metrics: dict[str, float] = {}
    policy.eval()
    with autocast_context(tokens.input_ids.device, config.model.bf16):
        with gathered(policy):
            proximal, entropy = token_logprobs(policy, tokens, temperature, with_entropy=True, max_tokens=budget,
                                               chunk_tokens=config.train.logprob_chunk_tokens)
        batch.proximal_logp = proximal.float()
        metrics["entropy"] = float(algos.masked_mean(entropy.float(), mask))
        fresh = ~batch.is_replay
        # sampler vs trainer log-probs of the same tokens (LESSONS #10): a non-zero gap makes "on-policy" off-policy
        log_ratio = batch.proximal_logp[fresh] - batch.behaviour_logp[fresh]
        gap = log_ratio.abs() * mask[fresh]
        metrics["logprob_mismatch/max"] = float(gap.max()) if gap.numel() else 0.0
        metrics["logprob_mismatch/mean"] = float(algos.masked_mean(gap, mask[fresh]))
        # tokens whose ratio pi_k(trainer) / pi_k(sampler) already lies outside the clip range before any update:
        # with recompute they are re-centred below, with engine log-probs they are clipped from the first minibatch
        eps = config.algorithm.clip_eps
        outside = ((log_ratio.exp() - 1).abs() > eps).float()
        metrics["logprob_mismatch/outside_clip_share"] = float(algos.masked_mean(outside, mask[fresh]))
        if config.rollout.behaviour_logprobs == "recompute":
            # fresh data: behaviour = pi_k as the trainer computes it, so their clip centre is exactly 1
            batch.behaviour_logp[fresh] = batch.proximal_logp[fresh]
        else:
            metrics.update(mismatch_correction(config, batch))
        if references.reference is not None:
            batch.reference_logp = references.reference_logprobs(tokens, temperature, budget, gathered)
            metrics["kl/base"] = float(algos.masked_mean(
                algos.kl_penalty(batch.proximal_logp, batch.reference_logp, "k3"), mask))
        measure = measure_precedent and references.lagged is not None
        if references.uses_kl and (plan.kl_convex_weight < 1.0 or measure):
            precedent = references.precedent_logprobs(tokens, temperature, budget, batch.proximal_logp, gathered)
            if plan.kl_convex_weight < 1.0:
                batch.precedent_logp = precedent
            if references.lagged is not None:  # a proximal precedent is pi_k itself: its KL here is 0 by construction
                metrics["kl/precedent"] = float(algos.masked_mean(
                    algos.kl_penalty(batch.proximal_logp, precedent, "k3"), mask))
        if critic is not None:
            critic.eval()
            with gathered(critic):
                batch.old_values = token_values(critic, tokens, max_tokens=budget).float()
    policy.train()
    return metrics


def mismatch_correction(config: Config, batch: StepBatch) -> dict[str, float]:
    """Sampler (engine) vs trainer log-probs of the behaviour policy, by fresh / replayed data; with
    rollout.is_correction=tis|mis, the loss then uses the trainer's log-probs as behaviour and IS weights."""
    ro, mask = config.rollout, batch.tokens.response_mask
    fresh = ~batch.is_replay
    batch.trainer_behaviour_logp[fresh] = batch.proximal_logp[fresh]
    gap = (batch.trainer_behaviour_logp - batch.behaviour_logp).abs()
    metrics: dict[str, float] = {}
    for kind, rows in (("fresh", fresh), ("replay", batch.is_replay)):
        if bool(rows.any()) and bool(mask[rows].any()):
            metrics[f"logprob_mismatch/{kind}_mean"] = float(algos.masked_mean(gap[rows], mask[rows]))
            metrics[f"logprob_mismatch/{kind}_max"] = float((gap[rows] * mask[rows]).max())
    if ro.is_correction == "none":
        return metrics
    raw = algos.raw_is_weights(batch.trainer_behaviour_logp, batch.behaviour_logp, mask, ro.is_level)
    batch.is_weights = algos.mismatch_is_weights(batch.trainer_behaviour_logp, batch.behaviour_logp, mask,
                                                 ro.is_correction, ro.is_cap, ro.is_level)
    batch.behaviour_logp = batch.trainer_behaviour_logp.clone()
    for kind, rows in (("", torch.ones_like(fresh)), ("fresh_", fresh), ("replay_", batch.is_replay)):
        stats = algos.is_weight_statistics(raw[rows], batch.is_weights[rows], mask[rows])
        metrics.update({f"is_correction/{kind}{name}": value for name, value in stats.items()})
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
