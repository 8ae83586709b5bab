"""The critic (PPO): a value model initialised from the policy, its optimizer and its clipped value-loss update.

Under LoRA (`model.lora.r > 0`) the critic has its own adapters on its own copy of the trunk, and a value head
trained in full (a zero-initialised head has nothing to adapt).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from remix_rft import algos, lora
from remix_rft.batching import TokenBatch, token_values
from remix_rft.config import Config
from remix_rft.distributed import Distributed
from remix_rft.experience import StepBatch
from remix_rft.models import ValueModel, autocast_context
from remix_rft.schedule import StepPlan
from remix_rft.updates import SINGLE_PROCESS, build_adamw, local_minibatch_rows, minibatch_step

# the critic's minibatch shuffles are offset from the policy's pass numbers: different, still a function of (seed, step)
CRITIC_SHUFFLE_OFFSET = 1000


class Critic:
    """A `ValueModel` with its own AdamW; `update` runs the step's value-loss passes."""

    def __init__(self, policy: torch.nn.Module, config: Config, device: torch.device,
                 dist: Distributed = SINGLE_PROCESS):
        self.config, self.dist = config, dist
        model = ValueModel.from_pretrained_lm(policy).to(device)
        lora_settings = config.model.lora
        if lora_settings.enabled:  # its own adapters on its own (frozen) trunk; the value head trains in full
            lora.inject(model.trunk, lora_settings.r, lora_settings.alpha, lora_settings.dropout,
                        lora_settings.peft_target_modules)
        self.model = dist.shard(model, bf16=config.model.bf16)
        trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        parameters: list = [p for _, p in trainable]
        if lora_settings.enabled:  # adapters at LoRA's rate (10x); the fully trained head at the full-finetuning one
            head = [p for name, p in trainable if "value_head" in name]
            parameters = [{"params": [p for name, p in trainable if "value_head" not in name], "lr": config.critic_lr},
                          {"params": head, "lr": config.train.critic_lr}]
        self.optimizer = build_adamw(parameters, config.critic_lr, config.train.weight_decay)

    def update(self, batch: StepBatch, plan: StepPlan, step: int) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        clip_fracs: list[float] = []
        # the policy's constant norm_len: each micro-batch's own width would make the accumulated critic gradient
        # differ from the minibatch's under seq-mean-token-sum-norm
        norm_len = cfg.algorithm.loss_norm_len or cfg.rollout.max_new_tokens

        def micro_loss(index: torch.Tensor, sub: TokenBatch, record: bool) -> torch.Tensor:
            width = sub.response_ids.shape[1]
            with autocast_context(sub.input_ids.device, cfg.model.bf16):
                values = token_values(self.model, sub).float()
            loss, value_metrics = algos.value_loss(values, batch.old_values[index][:, :width],
                                                   batch.returns[index][:, :width], sub.response_mask,
                                                   clip=cfg.algorithm.value_clip, agg=cfg.algorithm.loss_agg,
                                                   norm_len=norm_len)
            if record:
                clip_fracs.append(value_metrics["vf_clip_frac"])
            return loss

        results = [minibatch_step(batch.tokens, rows, self.optimizer, self.model, micro_loss,
                                  micro_batch_tokens=cfg.train.micro_batch_tokens,
                                  max_grad_norm=cfg.train.max_grad_norm, loss_agg=cfg.algorithm.loss_agg,
                                  step=step, what="critic", dist=self.dist)
                   for epoch in range(plan.updates_per_batch)
                   for rows in local_minibatch_rows(len(batch.tokens), cfg.train.minibatch_size, cfg.train.seed,
                                                    step, CRITIC_SHUFFLE_OFFSET + epoch, self.dist)]
        losses = [r[0] for r in results if r is not None]
        explained = self._explained_variance(batch)
        if self.dist.active:
            clip_sum, clip_count = self.dist.all_reduce([float(np.sum(clip_fracs)), float(len(clip_fracs))])
            clip_fraction = clip_sum / clip_count if clip_count else 0.0
        else:
            clip_fraction = float(np.mean(clip_fracs)) if clip_fracs else 0.0
        return {"loss/value": float(np.mean(losses)) if losses else float("nan"),
                "value/clip_fraction": clip_fraction,
                "value/explained_variance": float(explained),
                "skipped_critic_updates": len(results) - len(losses)}

    @torch.no_grad()
    def _explained_variance(self, batch: StepBatch) -> float:
        """1 - Var(returns - values) / Var(returns) over the response tokens of the (global) batch."""
        mask, returns, values = batch.tokens.response_mask, batch.returns, batch.old_values
        if not self.dist.active:
            return float(1 - algos.masked_mean((returns - values).square(), mask) / (
                algos.masked_mean((returns - algos.masked_mean(returns, mask)).square(), mask) + 1e-8))
        count, returns_sum, error_sq = self.dist.all_reduce(
            [float(mask.sum()), float((returns * mask).sum()), float(((returns - values).square() * mask).sum())])
        mean = returns_sum / max(count, 1.0)
        spread = self.dist.all_reduce([float(((returns - mean).square() * mask).sum())])[0]
        return 1 - (error_sq / max(count, 1.0)) / (spread / max(count, 1.0) + 1e-8)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
