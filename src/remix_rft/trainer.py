"""The ReMix trainer: GRPO / PPO, with or without ReMix, in one code path.

One training step (`Trainer.train_step`), top to bottom:
  1. plan the step (phase, off-policy fraction, updates per batch, KL-Convex weight); reincarnate if due
  2. generate fresh responses for (1-p) of the prompts (all of them on-policy), score them
  3. draw replayed groups from the buffer (rollouts of the last N policies)
  4. log-prob passes without grad: pi_k (clip centres / proximal), base reference, precedent (lagged) policy
  5. advantages: GRPO keeps each group's advantage from generation time; PPO runs GAE with the current critic
  6. `updates_per_batch` passes of minibatch updates on the METHOD.md objective; critic updates (PPO)
  7. push the fresh groups to the buffer; the lagged policy now holds pi_k for the next step's precedent KL
With ReMix disabled the same code runs with p = 0, one update pass and no reincarnation: plain GRPO / PPO.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from remix_rft import algos
from remix_rft.batching import TokenBatch, collate, split_by_token_budget, token_logprobs, token_values
from remix_rft.buffer import ReplayBuffer, RolloutGroup
from remix_rft.checkpoint import latest_checkpoint, save_checkpoint
from remix_rft.config import Config, load_yaml
from remix_rft.data import format_prompt, load_examples
from remix_rft.data.types import Example
from remix_rft.evaluation import build_eval_sets, evaluate, markdown_table
from remix_rft.metrics import MetricsLogger, truncate_metrics_after
from remix_rft.models import ValueModel, autocast_context, load_model, load_tokenizer
from remix_rft.rewards import GRADING_PROBLEMS, build_reward, summarise_scores
from remix_rft.rollout import SamplingParams, build_engine
from remix_rft.schedule import ReMixSchedule, StepPlan

logger = logging.getLogger(__name__)

# advantage estimators that need the critic's values, so they run on every training batch (PPO)
CRITIC_ESTIMATORS = {"gae"}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak allocated GPU memory on CUDA), in MiB."""
    out = {"memory/peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["memory/peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_schedule(config: Config) -> ReMixSchedule:
    r, prompts = config.remix, config.train.prompts_per_step
    if not r.enabled:
        return ReMixSchedule.on_policy(prompts)
    return ReMixSchedule(
        prompts_per_step=prompts, offpolicy_fraction=r.offpolicy_fraction, updates_per_batch=r.updates_per_batch,
        reincarnate_at=r.reincarnate_at, kl_convex=r.kl_convex, kl_convex_start=r.kl_convex_start,
        kl_convex_interval=r.kl_convex_interval, kl_convex_decrement=r.kl_convex_decrement,
        kl_convex_floor=r.kl_convex_floor,
    )


class PromptSampler:
    """Walks the training set in seeded random order, epoch after epoch; its state is two integers."""

    def __init__(self, size: int, seed: int):
        if size == 0:
            raise ValueError("the training set is empty")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(count - len(out), self.size - self.position)
            out.extend(self._order[self.position:self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


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


@dataclass
class _RatioTally:
    """Running importance-ratio statistics over all update micro-batches of a step, for one kind of data."""

    weight_sum: float = 0.0
    weight_sq_sum: float = 0.0
    tokens: float = 0.0
    clipped: float = 0.0
    max_ratio: float = 0.0
    log_ratio_sq_sum: float = 0.0

    def add(self, log_ratio: torch.Tensor, centre: torch.Tensor, mask: torch.Tensor, clip_eps: float) -> None:
        if mask.sum() == 0:
            return
        ratio = torch.exp(log_ratio.clamp(-20, 20))
        outside = ((ratio < centre - clip_eps) | (ratio > centre + clip_eps)).float()
        self.weight_sum += float((ratio * mask).sum())
        self.weight_sq_sum += float((ratio.square() * mask).sum())
        self.tokens += float(mask.sum())
        self.clipped += float((outside * mask).sum())
        self.max_ratio = max(self.max_ratio, float((ratio * mask).max()))
        self.log_ratio_sq_sum += float((log_ratio.square() * mask).sum())

    def metrics(self, kind: str | None = None) -> dict[str, float]:
        """Keys `ratio/mean`, `clip_fraction`, ... for all data, or `ratio/replay_mean`, `clip_fraction/replay`, ..."""
        if self.tokens == 0:
            return {}
        ratio_prefix, suffix = (f"{kind}_", f"/{kind}") if kind else ("", "")
        return {
            f"ratio/{ratio_prefix}mean": self.weight_sum / self.tokens,
            f"ratio/{ratio_prefix}max": self.max_ratio,
            f"clip_fraction{suffix}": self.clipped / self.tokens,
            f"ess{suffix}": self.weight_sum ** 2 / (self.tokens * self.weight_sq_sum),
            f"kl/behaviour{suffix}": 0.5 * self.log_ratio_sq_sum / self.tokens,
        }


@dataclass
class TrainState:
    step: int = 0  # last completed step
    rollouts_total: int = 0
    tokens_total: int = 0
    reincarnated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Builds everything a run needs from a Config and runs `train()`; see the module docstring for one step."""

    def __init__(self, config: Config, run_dir: Path | None = None, resume_from: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None):
        self.config = config
        self.on_step_end = on_step_end
        cfg = config
        self.device = resolve_device(cfg.model.device)
        self._seed_everything(cfg.train.seed)
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())

        # models: policy (trained), reference (KL base), lagged precedent, critic (PPO)
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.pad_id = self.tokenizer.pad_token_id
        self.policy = self._load_policy(cfg.model.name)
        if cfg.model.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.uses_kl = cfg.algorithm.kl_coef > 0
        self.reference = self._frozen_copy(self.policy) if self.uses_kl else None
        self.needs_lagged = self.uses_kl and cfg.remix.enabled and cfg.remix.kl_convex and cfg.remix.precedent == "lagged"
        self.lagged = self._frozen_copy(self.policy) if self.needs_lagged else None
        self.critic = None
        if cfg.algorithm.name == "ppo":
            self.critic = ValueModel.from_pretrained_lm(self.policy).to(self.device)

        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        warmup = max(cfg.train.warmup_steps, 0)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.critic_optimizer = (torch.optim.AdamW(self.critic.parameters(), lr=cfg.train.critic_lr,
                                                   weight_decay=cfg.train.weight_decay) if self.critic else None)

        self.engine = build_engine(cfg.rollout.engine, self.policy, self.tokenizer,
                                   max_batch_size=cfg.rollout.max_batch_size, autocast_bf16=cfg.model.autocast_bf16)
        self.reward = build_reward(cfg.reward.name, format_weight=cfg.reward.format_weight, timeout=cfg.reward.timeout,
                                   correct_reward=cfg.reward.correct_reward,
                                   incorrect_reward=cfg.reward.incorrect_reward,
                                   require_boxed=cfg.reward.require_boxed, num_workers=cfg.reward.num_workers,
                                   custom=cfg.reward.custom)

        self.train_examples = load_examples(cfg.data.train, data_dir=cfg.data.data_dir, limit=cfg.data.limit,
                                            problem_key=cfg.data.problem_key, answer_key=cfg.data.answer_key,
                                            seed=cfg.train.seed, **self._train_options())
        self._prompt_cache: dict[int, str] = {}
        self.sampler = PromptSampler(len(self.train_examples), cfg.train.seed)
        self.schedule = build_schedule(cfg)
        self.buffer = ReplayBuffer(cfg.remix.history_window, seed=cfg.train.seed)
        self.state = TrainState()
        self._eval_sets: dict[str, list[Example]] | None = None
        self.eval_history: list[tuple[int, Any]] = []

        if resume_from is not None:
            self._load_checkpoint(resume_from)
            dropped = truncate_metrics_after(self.run_dir / "metrics.jsonl", self.state.step)
            if dropped:
                logger.info("dropped %d metric lines logged after the checkpoint at step %d", dropped, self.state.step)
        self.metrics = MetricsLogger(self.run_dir, tensorboard=cfg.logging.tensorboard,
                                     wandb_project=cfg.logging.wandb_project if cfg.logging.wandb else None,
                                     run_name=self.run_dir.name, config=cfg.to_dict(), resume=resume_from is not None)

    # ------------------------------------------------------------------------------------------------ set-up helpers
    def _new_run_dir(self) -> Path:
        name = self.config.logging.run_name
        if not name:
            kind = ("remix-" if self.config.remix.enabled else "") + self.config.algorithm.name
            name = f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        return Path(self.config.logging.output_dir) / name

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _load_policy(self, name: str) -> torch.nn.Module:
        model = load_model(name, dtype=self.config.model.dtype).to(self.device)
        model.train()
        return model

    @staticmethod
    def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
        clone = copy.deepcopy(model)
        clone.eval()
        clone.requires_grad_(False)
        return clone

    def _train_options(self) -> dict[str, Any]:
        options = dict(self.config.data.train_options)
        if self.config.data.train == "arithmetic":
            options.setdefault("split", "train")
        return options

    def _prompt(self, index: int) -> str:
        if index not in self._prompt_cache:
            self._prompt_cache[index] = format_prompt(self.tokenizer, self.train_examples[index].problem,
                                                      instruction=self.config.data.instruction,
                                                      system_prompt=self.config.data.system_prompt)
        return self._prompt_cache[index]

    def _autocast(self):
        return autocast_context(self.device, self.config.model.autocast_bf16)

    def _sampling(self, step: int) -> SamplingParams:
        ro = self.config.rollout
        return SamplingParams(max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, seed=self.config.train.seed * 1_000_003 + step)

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
        indices = self.sampler.next(plan.fresh_prompts)
        examples = [self.train_examples[i] for i in indices]
        t0 = time.perf_counter()
        rollouts = self.engine.generate([self._prompt(i) for i in indices], cfg.train.samples_per_prompt,
                                        self._sampling(step))
        times["generation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        per_response_examples = [examples[r.prompt_index] for r in rollouts]
        scores = self.reward.score([r.text for r in rollouts], per_response_examples)
        times["scoring"] = time.perf_counter() - t0
        fresh_groups = self._make_groups(step, indices, rollouts, scores)

        # 3. replayed groups: whole prompt groups from the last `history_window` policies
        replay_count = min(plan.replay_prompts, len(self.buffer))
        replay_groups = self.buffer.sample(replay_count) if replay_count else []
        batch = self._assemble(fresh_groups, replay_groups)

        # 4. log-prob passes without grad
        t0 = time.perf_counter()
        pass_metrics = self._logprob_passes(batch, plan, rollouts)
        times["logprobs"] = time.perf_counter() - t0
        if cfg.rollout.behaviour_logprobs == "recompute":
            # when replayed, these groups must carry the behaviour log-probs they were trained with as fresh data
            self._store_behaviour(fresh_groups, batch.behaviour_logp)

        # 5. advantages
        self._advantages(batch, plan)

        # the lagged policy only needs pi_{k-1} for step k's precedent log-probs, computed above; from here on it
        # holds pi_k, the precedent of the next step
        if self.lagged is not None:
            self.lagged.load_state_dict(self.policy.state_dict())

        # 6. updates
        t0 = time.perf_counter()
        update_metrics = self._update_policy(batch, plan, step)
        if self.critic is not None:
            update_metrics.update(self._update_critic(batch, plan, step))
        times["update"] = time.perf_counter() - t0

        # 7. the fresh groups join the buffer as generated by pi_k (version = step)
        if cfg.remix.enabled and plan.phase == "mix":
            self.buffer.add(fresh_groups)

        generated_tokens = sum(len(r.response_ids) for r in rollouts)
        self.state.step = step
        self.state.rollouts_total += len(rollouts)
        self.state.tokens_total += generated_tokens
        times["step"] = time.perf_counter() - step_start

        lengths = torch.tensor([len(r.response_ids) for r in rollouts], dtype=torch.float32)
        score_summary = summarise_scores(scores)
        record: dict[str, Any] = {
            "type": "train", "step": step, "phase": plan.phase,
            "rollouts/step": len(rollouts), "rollouts/total": self.state.rollouts_total,
            "rollouts/replayed": int(batch.is_replay.sum()), "replay/groups": len(replay_groups),
            "replay/mean_age": (float(np.mean([step - g.version for g in replay_groups])) if replay_groups else 0.0),
            "tokens/step": generated_tokens, "tokens/total": self.state.tokens_total,
            "reward/mean": float(torch.tensor([s.reward for s in scores]).mean()),
            "accuracy/train": float(np.mean([s.correct for s in scores])),
            "response_length/mean": float(lengths.mean()), "response_length/max": float(lengths.max()),
            "response_length/truncated_share": float(np.mean([r.finish_reason == "length" for r in rollouts])),
            "kl_convex/weight": plan.kl_convex_weight, "offpolicy_fraction": plan.offpolicy_fraction,
            "updates_per_batch": plan.updates_per_batch, "buffer/groups": len(self.buffer),
            "lr": self.lr_scheduler.get_last_lr()[0],
        }
        record.update({f"verifier/{k}": score_summary[k] for k in GRADING_PROBLEMS})
        record.update(pass_metrics)
        record.update(update_metrics)
        record.update({f"time/{k}": v for k, v in times.items()})
        record.update(peak_memory_mb(self.device))
        return record

    def _reincarnate(self, step: int) -> None:
        if self.reference is not None:
            self.reference.load_state_dict(self.policy.state_dict())
        self.state.reincarnated = True
        self.buffer.evict(step + self.config.remix.history_window + 1)  # replay is off from here on: free it
        self.metrics.log({"type": "event", "event": "reincarnation", "step": step,
                          "rollouts/total": self.state.rollouts_total,
                          "message": f"reference <- policy after step {step - 1}; on-policy from step {step}"})
        logger.info("step %d: policy reincarnation (reference <- current policy, on-policy from now on)", step)

    def _make_groups(self, step: int, indices: list[int], rollouts, scores) -> list[RolloutGroup]:
        group_size = self.config.train.samples_per_prompt
        rewards = torch.tensor([s.reward for s in scores], dtype=torch.float32)
        group_ids = torch.tensor([r.prompt_index for r in rollouts])
        if self.config.advantage_estimator in CRITIC_ESTIMATORS:
            seq_adv = torch.zeros_like(rewards)  # recomputed with the current critic at every step that uses it
        else:
            # sequence-level estimators (grpo, drgrpo, registered variants) run once, at generation time: a
            # replayed group keeps the advantage it was given then (METHOD.md section 1)
            estimator = algos.get_advantage_estimator(self.config.advantage_estimator)
            seq_adv, _ = estimator(rewards=rewards, mask=torch.ones(len(rewards), 1), group_ids=group_ids,
                                   eps=self.config.algorithm.grpo_eps)
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
                meta={"example_id": self.train_examples[index].id, "index": index},
            ))
        return groups

    def _assemble(self, fresh: list[RolloutGroup], replay: list[RolloutGroup]) -> StepBatch:
        prompts, responses, behaviour, rewards, advantages, is_replay, versions = [], [], [], [], [], [], []
        for groups, replayed in ((fresh, False), (replay, True)):
            for group in groups:
                for i, response in enumerate(group.response_ids):
                    prompts.append(group.prompt_ids)
                    responses.append(response)
                    behaviour.append(group.behaviour_logprobs[i])
                    rewards.append(float(group.rewards[i]))
                    advantages.append(float(group.advantages[i]))
                    is_replay.append(replayed)
                    versions.append(group.version)
        tokens = collate(prompts, responses, self.pad_id).to(self.device)
        behaviour_logp = torch.zeros(tokens.response_ids.shape, dtype=torch.float32)
        for row, values in enumerate(behaviour):
            behaviour_logp[row, :len(values)] = values
        return StepBatch(tokens=tokens, behaviour_logp=behaviour_logp.to(self.device),
                         rewards=torch.tensor(rewards, device=self.device),
                         sequence_advantages=torch.tensor(advantages, device=self.device),
                         is_replay=torch.tensor(is_replay, device=self.device),
                         versions=torch.tensor(versions, device=self.device))

    @staticmethod
    def _store_behaviour(groups: list[RolloutGroup], behaviour_logp: torch.Tensor) -> None:
        row = 0  # fresh rows come first in the batch, in group order (see _assemble)
        for group in groups:
            for i, response in enumerate(group.response_ids):
                group.behaviour_logprobs[i] = behaviour_logp[row, :len(response)].detach().cpu().clone()
                row += 1

    @torch.no_grad()
    def _logprob_passes(self, batch: StepBatch, plan: StepPlan, rollouts) -> dict[str, float]:
        cfg, tokens = self.config, batch.tokens
        mask = tokens.response_mask
        temperature = cfg.rollout.temperature
        budget = cfg.train.micro_batch_tokens
        metrics: dict[str, float] = {}
        self.policy.eval()
        with self._autocast():
            proximal, entropy = token_logprobs(self.policy, tokens, temperature, with_entropy=True, max_tokens=budget)
            batch.proximal_logp = proximal.float()
            metrics["entropy"] = float(algos.masked_mean(entropy.float(), mask))
            fresh = ~batch.is_replay
            # sampler vs trainer log-probs of the same tokens (LESSONS #10): a non-zero gap makes "on-policy" off-policy
            gap = (batch.behaviour_logp[fresh] - batch.proximal_logp[fresh]).abs() * mask[fresh]
            metrics["logprob_mismatch/max"] = float(gap.max()) if gap.numel() else 0.0
            if cfg.rollout.behaviour_logprobs == "recompute":
                # fresh data: behaviour = pi_k as the trainer computes it, so their clip centre is exactly 1
                batch.behaviour_logp[fresh] = batch.proximal_logp[fresh]
            if self.reference is not None:
                batch.reference_logp = token_logprobs(self.reference, tokens, temperature, max_tokens=budget)[0].float()
                metrics["kl/base"] = float(algos.masked_mean(
                    algos.kl_penalty(batch.proximal_logp, batch.reference_logp, "k3"), mask))
            if self.uses_kl and plan.kl_convex_weight < 1.0:
                if self.lagged is not None:
                    batch.precedent_logp = token_logprobs(self.lagged, tokens, temperature,
                                                          max_tokens=budget)[0].float()
                else:  # remix.precedent=proximal: pi_k's log-probs stand in for pi_{k-1}
                    batch.precedent_logp = batch.proximal_logp
                metrics["kl/precedent"] = float(algos.masked_mean(
                    algos.kl_penalty(batch.proximal_logp, batch.precedent_logp, "k3"), mask))
            if self.critic is not None:
                self.critic.eval()
                batch.old_values = token_values(self.critic, tokens, max_tokens=budget).float()
        self.policy.train()
        return metrics

    def _advantages(self, batch: StepBatch, plan: StepPlan) -> None:
        cfg, mask = self.config, batch.tokens.response_mask
        if cfg.advantage_estimator in CRITIC_ESTIMATORS:
            token_rewards = algos.sequence_rewards_to_tokens(batch.rewards, mask)
            if cfg.algorithm.kl_in_reward and batch.reference_logp is not None:
                kl = self._kl_term(batch.proximal_logp, batch.reference_logp, batch.precedent_logp,
                                   plan.kl_convex_weight, kind="k1")
                token_rewards = token_rewards - cfg.algorithm.kl_coef * kl * mask
            estimator = algos.get_advantage_estimator(cfg.advantage_estimator)
            advantages, returns = estimator(rewards=batch.rewards, mask=mask, values=batch.old_values,
                                            token_rewards=token_rewards, gamma=cfg.algorithm.gamma,
                                            lam=cfg.algorithm.gae_lambda)
            if cfg.algorithm.whiten_advantages:
                advantages = algos.masked_whiten(advantages, mask)
            batch.advantages, batch.returns = advantages * mask, returns
        else:
            batch.advantages = batch.sequence_advantages[:, None] * mask

    @staticmethod
    def _kl_term(logp: torch.Tensor, reference_logp: torch.Tensor, precedent_logp: torch.Tensor | None,
                 weight: float, kind: str) -> torch.Tensor:
        """Per-token KL-Convex penalty; plain KL to the reference when the precedent term has no weight."""
        if precedent_logp is None or weight >= 1.0:
            return algos.kl_penalty(logp, reference_logp, kind)
        return algos.kl_convex(logp, reference_logp, precedent_logp, weight, kind=kind)

    def _minibatches(self, size: int, step: int, epoch: int) -> list[torch.Tensor]:
        # seeded by (seed, step, pass) so a resumed run shuffles exactly like an uninterrupted one
        generator = torch.Generator().manual_seed((self.config.train.seed * 1_000_003 + step) * 101 + epoch)
        order = torch.randperm(size, generator=generator)
        mb = self.config.train.minibatch_size
        return [order[i:i + mb] for i in range(0, size, mb)]

    def _micro_weight(self, micro_mask: torch.Tensor, minibatch_mask: torch.Tensor) -> float:
        # each micro-batch's aggregated loss is re-weighted so the accumulated gradient equals the minibatch's
        if self.config.algorithm.loss_agg == "token-mean":
            return float(micro_mask.sum() / minibatch_mask.sum().clamp(min=1))
        return micro_mask.shape[0] / minibatch_mask.shape[0]

    def _minibatch_step(self, batch: StepBatch, rows: torch.Tensor, optimizer: torch.optim.Optimizer,
                        model: torch.nn.Module, micro_loss: Callable[[torch.Tensor, TokenBatch], torch.Tensor],
                        step: int, what: str) -> tuple[float, float] | None:
        """One optimizer step on `rows`, gradients accumulated over token-budget micro-batches.

        `micro_loss(index, sub_batch)` returns a micro-batch's aggregated loss; each is re-weighted so the summed
        gradient equals the minibatch's. Returns (loss, grad norm), or None when a non-finite loss or gradient
        skipped the step (weights untouched).
        """
        minibatch_mask = batch.tokens.response_mask[rows]
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        finite = True
        for micro in split_by_token_budget(batch.tokens.select(rows), self.config.train.micro_batch_tokens):
            index = rows[torch.as_tensor(micro)]
            sub = batch.tokens.select(index)
            loss = micro_loss(index, sub)
            if not torch.isfinite(loss):
                finite = False
                break
            weight = self._micro_weight(sub.response_mask, minibatch_mask)
            (loss * weight).backward()
            total += float(loss.detach()) * weight
        if finite:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.train.max_grad_norm)
            finite = bool(torch.isfinite(grad_norm))
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            logger.warning("step %d: non-finite %s loss or gradient, update skipped (weights untouched)", step, what)
            return None
        optimizer.step()
        return total, float(grad_norm)

    def _update_policy(self, batch: StepBatch, plan: StepPlan, step: int) -> dict[str, float]:
        cfg, alg = self.config, self.config.algorithm
        loss_fn = algos.get_policy_loss(alg.policy_loss)
        norm_len = alg.loss_norm_len or cfg.rollout.max_new_tokens
        tallies = {"fresh": _RatioTally(), "replay": _RatioTally()}
        kl_losses: list[float] = []

        def micro_loss(index: torch.Tensor, sub: TokenBatch) -> torch.Tensor:
            width, mask = sub.response_ids.shape[1], sub.response_mask

            def cut(x: torch.Tensor) -> torch.Tensor:
                return x[index][:, :width]

            with self._autocast():
                logp, entropy = token_logprobs(self.policy, sub, cfg.rollout.temperature,
                                               with_entropy=alg.entropy_coef > 0)
            logp = logp.float()
            behaviour, proximal = cut(batch.behaviour_logp), cut(batch.proximal_logp)
            loss, _ = loss_fn(logp, behaviour, proximal, cut(batch.advantages), mask,
                              clip_eps=alg.clip_eps, agg=alg.loss_agg, norm_len=norm_len)
            if self.uses_kl and not alg.kl_in_reward:
                precedent = cut(batch.precedent_logp) if batch.precedent_logp is not None else None
                kl = self._kl_term(logp, cut(batch.reference_logp), precedent, plan.kl_convex_weight,
                                   kind=alg.kl_estimator)
                kl_loss = algos.agg_loss(kl, mask, alg.loss_agg, norm_len=norm_len)
                loss = loss + alg.kl_coef * kl_loss
                kl_losses.append(float(kl_loss.detach()))
            if entropy is not None:
                loss = loss - alg.entropy_coef * algos.agg_loss(entropy.float(), mask, alg.loss_agg,
                                                                norm_len=norm_len)
            with torch.no_grad():
                log_ratio = logp.detach() - behaviour
                centre = torch.exp((proximal - behaviour).clamp(-20, 20))
                replay_rows = batch.is_replay[index][:, None].float()
                tallies["fresh"].add(log_ratio, centre, mask * (1 - replay_rows), alg.clip_eps)
                tallies["replay"].add(log_ratio, centre, mask * replay_rows, alg.clip_eps)
            return loss

        results = [self._minibatch_step(batch, rows, self.optimizer, self.policy, micro_loss, step, "policy")
                   for epoch in range(plan.updates_per_batch)
                   for rows in self._minibatches(len(batch.tokens), step, epoch)]
        done = [r for r in results if r is not None]
        if done:  # the lr clock counts steps that updated the weights
            self.lr_scheduler.step()
        overall = _RatioTally()
        for tally in tallies.values():
            for name in ("weight_sum", "weight_sq_sum", "tokens", "clipped", "log_ratio_sq_sum"):
                setattr(overall, name, getattr(overall, name) + getattr(tally, name))
            overall.max_ratio = max(overall.max_ratio, tally.max_ratio)
        metrics: dict[str, float] = {
            "loss/policy": float(np.mean([r[0] for r in done])) if done else float("nan"),
            "grad_norm": float(np.mean([r[1] for r in done])) if done else float("nan"),
            "optimizer_steps": len(done), "skipped_updates": len(results) - len(done),
        }
        if kl_losses:
            metrics["loss/kl"] = float(np.mean(kl_losses))
        metrics.update(overall.metrics())
        metrics.update(tallies["fresh"].metrics("fresh"))
        metrics.update(tallies["replay"].metrics("replay"))
        return metrics

    def _update_critic(self, batch: StepBatch, plan: StepPlan, step: int) -> dict[str, float]:
        cfg = self.config
        self.critic.train()
        clip_fracs: list[float] = []

        def micro_loss(index: torch.Tensor, sub: TokenBatch) -> torch.Tensor:
            width = sub.response_ids.shape[1]
            with self._autocast():
                values = token_values(self.critic, sub).float()
            loss, value_metrics = algos.value_loss(values, batch.old_values[index][:, :width],
                                                   batch.returns[index][:, :width], sub.response_mask,
                                                   clip=cfg.algorithm.value_clip, agg=cfg.algorithm.loss_agg)
            clip_fracs.append(value_metrics["vf_clip_frac"])
            return loss

        # a different shuffle from the policy's (offset pass numbers), still a function of (seed, step)
        results = [self._minibatch_step(batch, rows, self.critic_optimizer, self.critic, micro_loss, step, "critic")
                   for epoch in range(plan.updates_per_batch)
                   for rows in self._minibatches(len(batch.tokens), step, 1000 + epoch)]
        losses = [r[0] for r in results if r is not None]
        with torch.no_grad():
            mask = batch.tokens.response_mask
            explained = 1 - algos.masked_mean((batch.returns - batch.old_values).square(), mask) / (
                algos.masked_mean((batch.returns - algos.masked_mean(batch.returns, mask)).square(), mask) + 1e-8)
        return {"loss/value": float(np.mean(losses)) if losses else float("nan"),
                "value/clip_fraction": float(np.mean(clip_fracs)) if clip_fracs else 0.0,
                "value/explained_variance": float(explained),
                "skipped_critic_updates": len(results) - len(losses)}

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
        report.write(self.run_dir / "eval" / f"step_{step:06d}")
        return report

    # ------------------------------------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        state = self.state

        def write(directory: Path) -> None:
            self.policy.save_pretrained(directory / "policy", safe_serialization=True)
            self.tokenizer.save_pretrained(directory / "policy")
            if self.reference is not None and state.reincarnated:
                self.reference.save_pretrained(directory / "reference", safe_serialization=True)
            if self.lagged is not None:
                self.lagged.save_pretrained(directory / "precedent", safe_serialization=True)
            if self.critic is not None:
                self.critic.save_pretrained(directory / "critic")
            torch.save({
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict() if self.critic_optimizer else None,
            }, directory / "optimizer.pt")
            torch.save(self.buffer.state_dict(), directory / "buffer.pt")
            torch.save({
                "step": state.step, "rollouts_total": state.rollouts_total, "tokens_total": state.tokens_total,
                "reincarnated": state.reincarnated, "sampler": self.sampler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            }, directory / "trainer_state.pt")
            (directory / "trainer_state.json").write_text(json.dumps(
                {"step": state.step, "rollouts_total": state.rollouts_total, "tokens_total": state.tokens_total,
                 "reincarnated": state.reincarnated, "phase": self.schedule.plan(max(state.step, 1)).phase}, indent=2))

        return save_checkpoint(self.run_dir, state.step, write, keep=self.config.checkpoint.keep)

    def _load_checkpoint(self, directory: Path) -> None:
        directory = Path(directory)
        logger.info("resuming from %s", directory)
        self.policy.load_state_dict(load_model(str(directory / "policy"), dtype=self.config.model.dtype).state_dict())
        trainer_state = torch.load(directory / "trainer_state.pt", weights_only=False)
        if trainer_state["reincarnated"] and self.reference is not None:
            self.reference.load_state_dict(load_model(str(directory / "reference"),
                                                      dtype=self.config.model.dtype).state_dict())
        if self.lagged is not None:
            self.lagged.load_state_dict(load_model(str(directory / "precedent"),
                                                   dtype=self.config.model.dtype).state_dict())
        if self.critic is not None:
            self.critic.load_state_dict(ValueModel.load(directory / "critic").state_dict())
        optim = torch.load(directory / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(optim["optimizer"])
        self.lr_scheduler.load_state_dict(optim["lr_scheduler"])
        if self.critic_optimizer is not None and optim["critic_optimizer"] is not None:
            self.critic_optimizer.load_state_dict(optim["critic_optimizer"])
        self.buffer.load_state_dict(torch.load(directory / "buffer.pt", weights_only=False))
        self.sampler.load_state_dict(trainer_state["sampler"])
        self.state = TrainState(step=trainer_state["step"], rollouts_total=trainer_state["rollouts_total"],
                                tokens_total=trainer_state["tokens_total"],
                                reincarnated=trainer_state["reincarnated"])
        rng = trainer_state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

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
            summary = (f"step {step}/{cfg.train.steps} [{record['phase']}] reward {record['reward/mean']:.3f} "
                       f"acc {record['accuracy/train']:.3f} len {record['response_length/mean']:.0f} "
                       f"rollouts {record['rollouts/total']} ratio {record.get('ratio/mean', float('nan')):.3f} "
                       f"kl {record.get('kl/base', 0.0):.4f} {record['time/step']:.1f}s")
            if cfg.logging.progress:
                progress.set_postfix(reward=f"{record['reward/mean']:.3f}", rollouts=record["rollouts/total"])
                tqdm.write(summary)
            else:
                logger.info(summary)
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                self.evaluate(step)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                self.save()
            if self.on_step_end is not None:
                self.on_step_end(self, record)
        progress.close()
        if cfg.checkpoint.save_final:
            self.save()
        if cfg.eval.after_training and cfg.eval.benchmarks:
            self.evaluate(self.state.step)
        return record

    def close(self) -> None:
        self.metrics.close()
        close = getattr(self.reward, "close", None)
        if close is not None:
            close()


def comparison_table(before, after, fmt: str = "text") -> str:
    """Held-out Pass@1 before vs after training, per benchmark and averaged."""
    before_rows, after_rows = _pass_at_1(before), _pass_at_1(after)
    header = ["benchmark", "pass@1 before", "pass@1 after", "change"]
    rows = []
    for name in after_rows:
        b, a = before_rows.get(name), after_rows[name]
        rows.append([name, "-" if b is None else f"{100 * b:.1f}", f"{100 * a:.1f}",
                     "-" if b is None else f"{100 * (a - b):+.1f}"])
    if fmt == "markdown":
        return markdown_table(header, rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt_row = "  ".join(f"{{:<{w}}}" for w in widths).format
    return "\n".join([fmt_row(*header), fmt_row(*["-" * w for w in widths])] + [fmt_row(*row) for row in rows])


def _pass_at_1(report) -> dict[str, float]:
    if report is None:
        return {}
    metrics = report.metrics(prefix="eval")
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "pass@1":
            out[parts[1]] = value
    return out


def report_before_after(eval_history: list[tuple[int, Any]], run_dir: Path, rollouts_total: int) -> None:
    """Print the held-out before/after table of a finished run and write it to `eval_summary.md`."""
    if not eval_history:
        return
    before = eval_history[0][1] if eval_history[0][0] == 0 else None
    after = eval_history[-1][1]
    print(f"\nHeld-out evaluation ({rollouts_total} rollouts generated in training):\n"
          f"{comparison_table(before, after)}")
    (Path(run_dir) / "eval_summary.md").write_text(comparison_table(before, after, fmt="markdown") + "\n")


def run_training(config: Config, resume: Path | None = None,
                 on_step_end: Callable[[Trainer, dict[str, Any]], None] | None = None) -> Trainer:
    """Train from a config (or resume a run dir) and print the before/after evaluation table."""
    run_dir, checkpoint = None, None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no complete checkpoint under {run_dir / 'checkpoints'} to resume from")
    trainer = Trainer(config, run_dir=run_dir, resume_from=checkpoint, on_step_end=on_step_end)
    try:
        trainer.train()
    finally:
        trainer.close()
    report_before_after(trainer.eval_history, trainer.run_dir, trainer.state.rollouts_total)
    print(f"run directory: {trainer.run_dir}")
    return trainer


def config_for_resume(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with, as a dict (overrides are merged on top by the CLI)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a remix-rft run directory?")
    return load_yaml(path)

