"""The actor: the policy being trained, its optimizer and learning-rate schedule, and the Mix-PPG update over
minibatches and token-budget micro-batches (METHOD.md objective)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from remix_rft import algos
from remix_rft.batching import TokenBatch, token_logprobs
from remix_rft.config import Config
from remix_rft.distributed import Distributed
from remix_rft.experience import StepBatch, rollout_truncation
from remix_rft.models import autocast_context
from remix_rft.references import kl_term
from remix_rft.schedule import StepPlan
from remix_rft.updates import SINGLE_PROCESS, build_adamw, local_minibatch_rows, minibatch_step


@dataclass
class RatioTally:
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

    SUMS = ("weight_sum", "weight_sq_sum", "tokens", "clipped", "log_ratio_sq_sum")

    def reduced(self, dist: Distributed) -> RatioTally:
        """The tally over all ranks."""
        if not dist.active:
            return self
        sums = dist.all_reduce([getattr(self, name) for name in self.SUMS])
        out = RatioTally(**dict(zip(self.SUMS, sums)))
        out.max_ratio = dist.all_reduce([self.max_ratio], op="max")[0]
        return out

    def merged(self, other: RatioTally) -> RatioTally:
        out = RatioTally(**{name: getattr(self, name) + getattr(other, name) for name in self.SUMS})
        out.max_ratio = max(self.max_ratio, other.max_ratio)
        return out

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


class Actor:
    """The trained policy with AdamW and a linear-warmup lr schedule; `update` runs one step's Mix-PPG passes."""

    def __init__(self, model: torch.nn.Module, config: Config, dist: Distributed = SINGLE_PROCESS):
        self.model, self.config, self.dist = model, config, dist
        train = config.train
        # the trainable parameters only: under LoRA the frozen base has no AdamW state (config.policy_lr: LoRA's rate)
        self.optimizer = build_adamw([p for p in model.parameters() if p.requires_grad], config.policy_lr,
                                     train.weight_decay)
        warmup = max(train.warmup_steps, 0)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)

    @property
    def lr(self) -> float:
        return self.lr_scheduler.get_last_lr()[0]

    def update(self, batch: StepBatch, plan: StepPlan, step: int) -> dict[str, float]:
        """`plan.updates_per_batch` passes of shuffled minibatch updates on the batch; returns the step's metrics."""
        cfg, alg = self.config, self.config.algorithm
        loss_fn = algos.get_policy_loss(alg.policy_loss)
        norm_len = alg.loss_norm_len or cfg.rollout.max_new_tokens
        uses_kl = alg.kl_coef > 0
        tallies = {"fresh": RatioTally(), "replay": RatioTally()}
        kl_losses: list[float] = []
        truncation = rollout_truncation(cfg)
        outside_counts = [0.0, 0.0]  # response tokens outside the current policy's truncated set, all tokens

        # a token a correction rejected (weight 0: a mismatch mask, MIS above its cap, outside the top-p / top-k set)
        # leaves every term: the policy loss's normaliser, the KL and the entropy, as if it were not in the batch
        # (verl's rollout_rs does the same), so a kept token's gradient does not shrink when others are rejected. The
        # forward still runs over every response token: a micro-batch with all its tokens rejected keeps a graph, so
        # every rank's backward (FSDP's collectives) runs
        loss_mask = None if batch.is_weights is None else \
            batch.tokens.response_mask * (batch.is_weights > 0).to(batch.tokens.response_mask.dtype)

        def micro_loss(index: torch.Tensor, sub: TokenBatch, record: bool) -> torch.Tensor:
            width = sub.response_ids.shape[1]

            def cut(x: torch.Tensor) -> torch.Tensor:
                return x[index][:, :width]

            mask = sub.response_mask if loss_mask is None else cut(loss_mask)

            with autocast_context(sub.input_ids.device, cfg.model.bf16):
                logp, entropy = token_logprobs(self.model, sub, cfg.rollout.temperature,
                                               with_entropy=alg.entropy_coef > 0,
                                               chunk_tokens=cfg.train.logprob_chunk_tokens, truncation=truncation,
                                               share_prompts=cfg.train.shared_prompt_forward)
            logp = logp.float()
            behaviour, proximal = cut(batch.behaviour_logp), cut(batch.proximal_logp)
            is_weights = None if batch.is_weights is None else cut(batch.is_weights)
            if truncation is not None:
                # a token this update pushed out of the policy's truncated set has log-prob -inf: it leaves the loss
                # (weight 0) and the behaviour log-prob stands in, a constant, so the ratio and KL stay finite
                outside = torch.isneginf(logp) & (mask > 0)
                if record:
                    outside_counts[0] += float(outside.sum())
                    outside_counts[1] += float(mask.sum())
                if bool(outside.any()):
                    logp = torch.where(outside, behaviour, logp)
                    is_weights = (~outside).float() * (mask if is_weights is None else is_weights)
            correction = {} if is_weights is None else {"is_weights": is_weights}
            loss, _ = loss_fn(logp, behaviour, proximal, cut(batch.advantages), mask,
                              clip_eps=alg.clip_eps, agg=alg.loss_agg, norm_len=norm_len, **correction)
            if uses_kl and not alg.kl_in_reward:
                precedent = cut(batch.precedent_logp) if batch.precedent_logp is not None else None
                kl = kl_term(logp, cut(batch.reference_logp), precedent, plan.kl_convex_weight,
                             kind=alg.kl_estimator)
                kl_loss = algos.agg_loss(kl, mask, alg.loss_agg, norm_len=norm_len)
                loss = loss + alg.kl_coef * kl_loss
                if record:
                    kl_losses.append(float(kl_loss.detach()))
            if entropy is not None:
                loss = loss - alg.entropy_coef * algos.agg_loss(entropy.float(), mask, alg.loss_agg,
                                                                norm_len=norm_len)
            if not record:
                return loss
            with torch.no_grad():
                log_ratio = logp.detach() - behaviour
                centre = torch.exp((proximal - behaviour).clamp(-20, 20))
                replay_rows = batch.is_replay[index][:, None].float()
                tallies["fresh"].add(log_ratio, centre, mask * (1 - replay_rows), alg.clip_eps)
                tallies["replay"].add(log_ratio, centre, mask * replay_rows, alg.clip_eps)
            return loss

        results = [minibatch_step(batch.tokens, rows, self.optimizer, self.model, micro_loss,
                                  micro_batch_tokens=cfg.train.micro_batch_tokens,
                                  max_grad_norm=cfg.train.max_grad_norm, loss_agg=alg.loss_agg, step=step,
                                  what="policy", dist=self.dist, loss_mask=loss_mask)
                   for epoch in range(plan.updates_per_batch)
                   for rows in local_minibatch_rows(len(batch.tokens), cfg.train.minibatch_size, cfg.train.seed,
                                                    step, epoch, self.dist)]
        done = [r for r in results if r is not None]
        if done:  # the lr clock counts steps that updated the weights
            self.lr_scheduler.step()
        metrics: dict[str, Any] = {
            "loss/policy": float(np.mean([r[0] for r in done])) if done else float("nan"),
            "grad_norm": float(np.mean([r[1] for r in done])) if done else float("nan"),
            "optimizer_steps": len(done), "skipped_updates": len(results) - len(done),
        }
        if self.dist.active:
            kl_sum, kl_count = self.dist.all_reduce([float(np.sum(kl_losses)), float(len(kl_losses))])
            if kl_count:
                metrics["loss/kl"] = kl_sum / kl_count
            tallies = {kind: tally.reduced(self.dist) for kind, tally in tallies.items()}
            if truncation is not None:
                outside_counts = self.dist.all_reduce(outside_counts)
        elif kl_losses:
            metrics["loss/kl"] = float(np.mean(kl_losses))
        if truncation is not None and outside_counts[1]:
            metrics["truncation/update_masked_share"] = outside_counts[0] / outside_counts[1]
        metrics.update(tallies["fresh"].merged(tallies["replay"]).metrics())
        metrics.update(tallies["fresh"].metrics("fresh"))
        metrics.update(tallies["replay"].metrics("replay"))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and lr-schedule state (the weights are saved as a model)."""
        return {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
