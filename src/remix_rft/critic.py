"""The critic (PPO): a value model initialised from the policy, its optimizer and its clipped value-loss update."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from remix_rft import algos
from remix_rft.batching import TokenBatch, token_values
from remix_rft.config import Config
from remix_rft.experience import StepBatch
from remix_rft.models import ValueModel, autocast_context
from remix_rft.schedule import StepPlan
from remix_rft.updates import minibatch_rows, minibatch_step

# the critic's minibatch shuffles are offset from the policy's pass numbers: different, still a function of (seed, step)
CRITIC_SHUFFLE_OFFSET = 1000


class Critic:
    """A `ValueModel` with its own AdamW; `update` runs the step's value-loss passes."""

    def __init__(self, policy: torch.nn.Module, config: Config, device: torch.device):
        self.config = config
        self.model = ValueModel.from_pretrained_lm(policy).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.train.critic_lr,
                                           weight_decay=config.train.weight_decay)

    def update(self, batch: StepBatch, plan: StepPlan, step: int) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        clip_fracs: list[float] = []
        # the policy's constant norm_len: each micro-batch's own width would make the accumulated critic gradient
        # differ from the minibatch's under seq-mean-token-sum-norm
        norm_len = cfg.algorithm.loss_norm_len or cfg.rollout.max_new_tokens

        def micro_loss(index: torch.Tensor, sub: TokenBatch) -> torch.Tensor:
            width = sub.response_ids.shape[1]
            with autocast_context(sub.input_ids.device, cfg.model.bf16):
                values = token_values(self.model, sub).float()
            loss, value_metrics = algos.value_loss(values, batch.old_values[index][:, :width],
                                                   batch.returns[index][:, :width], sub.response_mask,
                                                   clip=cfg.algorithm.value_clip, agg=cfg.algorithm.loss_agg,
                                                   norm_len=norm_len)
            clip_fracs.append(value_metrics["vf_clip_frac"])
            return loss

        results = [minibatch_step(batch.tokens, rows, self.optimizer, self.model, micro_loss,
                                  micro_batch_tokens=cfg.train.micro_batch_tokens,
                                  max_grad_norm=cfg.train.max_grad_norm, loss_agg=cfg.algorithm.loss_agg,
                                  step=step, what="critic")
                   for epoch in range(plan.updates_per_batch)
                   for rows in minibatch_rows(len(batch.tokens), cfg.train.minibatch_size, cfg.train.seed, step,
                                              CRITIC_SHUFFLE_OFFSET + epoch)]
        losses = [r[0] for r in results if r is not None]
        with torch.no_grad():
            mask = batch.tokens.response_mask
            explained = 1 - algos.masked_mean((batch.returns - batch.old_values).square(), mask) / (
                algos.masked_mean((batch.returns - algos.masked_mean(batch.returns, mask)).square(), mask) + 1e-8)
        return {"loss/value": float(np.mean(losses)) if losses else float("nan"),
                "value/clip_fraction": float(np.mean(clip_fracs)) if clip_fracs else 0.0,
                "value/explained_variance": float(explained),
                "skipped_critic_updates": len(results) - len(losses)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
