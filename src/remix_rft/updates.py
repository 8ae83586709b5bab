"""Minibatch optimizer steps shared by the actor and the critic: seeded shuffles, token-budget micro-batches with
gradient accumulation, gradient clipping, and skipping a step whose loss or gradient is not finite."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from remix_rft.batching import TokenBatch, split_by_token_budget

logger = logging.getLogger(__name__)

MicroLoss = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


def minibatch_rows(size: int, minibatch_size: int, seed: int, step: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of each minibatch of one pass over a batch of `size` rows.

    Seeded by (seed, step, pass) so a resumed run shuffles exactly like an uninterrupted one."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + epoch)
    order = torch.randperm(size, generator=generator)
    return [order[i:i + minibatch_size] for i in range(0, size, minibatch_size)]


def micro_weight(micro_mask: torch.Tensor, minibatch_mask: torch.Tensor, loss_agg: str) -> float:
    """Weight of a micro-batch's aggregated loss so the accumulated gradient equals the minibatch's."""
    if loss_agg == "token-mean":
        return float(micro_mask.sum() / minibatch_mask.sum().clamp(min=1))
    return micro_mask.shape[0] / minibatch_mask.shape[0]


def minibatch_step(tokens: TokenBatch, rows: torch.Tensor, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                   micro_loss: MicroLoss, *, micro_batch_tokens: int | None, max_grad_norm: float, loss_agg: str,
                   step: int, what: str) -> tuple[float, float] | None:
    """One optimizer step on `rows` of `tokens`, gradients accumulated over token-budget micro-batches.

    `micro_loss(index, sub_batch)` returns a micro-batch's aggregated loss; each is re-weighted so the summed
    gradient equals the minibatch's. Returns (loss, grad norm), or None when a non-finite loss or gradient
    skipped the step (weights untouched).
    """
    minibatch_mask = tokens.response_mask[rows]
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    finite = True
    for micro in split_by_token_budget(tokens.select(rows), micro_batch_tokens):
        index = rows[torch.as_tensor(micro)]
        sub = tokens.select(index)
        loss = micro_loss(index, sub)
        if not torch.isfinite(loss):
            finite = False
            break
        weight = micro_weight(sub.response_mask, minibatch_mask, loss_agg)
        (loss * weight).backward()
        total += float(loss.detach()) * weight
    if finite:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        finite = bool(torch.isfinite(grad_norm))
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        logger.warning("step %d: non-finite %s loss or gradient, update skipped (weights untouched)", step, what)
        return None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no gradient memory held through generation and log-prob passes
    return total, float(grad_norm)
