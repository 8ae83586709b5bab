"""Minibatch optimizer steps shared by the actor and the critic: seeded shuffles, token-budget micro-batches with
gradient accumulation, gradient clipping, and skipping a step whose loss or gradient is not finite.

Data-parallel ranks hold disjoint rows of one global batch. A minibatch is global (the rows of one seeded
permutation of the global batch); each rank works on its own rows of it, normalises by the global token (or row)
count and scales by the world size (FSDP averages gradients over ranks), so the summed gradient equals one
process's on the whole minibatch. Ranks run the same number of forward/backward passes (FSDP's collectives pair
up): a rank with fewer micro-batches runs extra ones with weight 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from remix_rft.batching import TokenBatch, split_by_token_budget
from remix_rft.distributed import Distributed, grad_norm_value
from remix_rft.memory import release_freed_memory

logger = logging.getLogger(__name__)

# micro_loss(index, sub_batch, record): the micro-batch's aggregated loss; `record` False for a weight-0 pass that
# only keeps the ranks' collectives in step (its statistics must not be tallied)
MicroLoss = Callable[[torch.Tensor, TokenBatch, bool], torch.Tensor]

SINGLE_PROCESS = Distributed()


def build_adamw(parameters, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA, plain and FSDP2 parameters): it updates each tensor in place,
    where the default multi-tensor kernel makes a full-size temporary (sqrt of the second moment) as large as the
    model's weights at every step."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def minibatch_rows(size: int, minibatch_size: int, seed: int, step: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of each minibatch of one pass over a batch of `size` rows.

    Seeded by (seed, step, pass) so a resumed run shuffles exactly like an uninterrupted one."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + epoch)
    order = torch.randperm(size, generator=generator)
    return [order[i:i + minibatch_size] for i in range(0, size, minibatch_size)]


def local_minibatch_rows(local_size: int, minibatch_size: int, seed: int, step: int, epoch: int,
                         dist: Distributed) -> list[torch.Tensor]:
    """This rank's local row indices of each global minibatch; ranks' rows follow each other in rank order."""
    if not dist.active:
        return minibatch_rows(local_size, minibatch_size, seed, step, epoch)
    sizes = [int(size) for size in dist.all_gather_object(local_size)]
    offset = sum(sizes[:dist.rank])
    out = []
    for rows in minibatch_rows(sum(sizes), minibatch_size, seed, step, epoch):
        mine = rows[(rows >= offset) & (rows < offset + local_size)]
        out.append(mine - offset)
    return out


def micro_weight(micro_mask: torch.Tensor, minibatch_mask: torch.Tensor, loss_agg: str) -> float:
    """Weight of a micro-batch's aggregated loss so the accumulated gradient equals the minibatch's."""
    if loss_agg == "token-mean":
        return float(micro_mask.sum() / minibatch_mask.sum().clamp(min=1))
    return micro_mask.shape[0] / minibatch_mask.shape[0]


def _global_micro_weight(micro_mask: torch.Tensor, tokens: float, rows: float, loss_agg: str) -> float:
    if loss_agg == "token-mean":
        return float(micro_mask.sum() / torch.tensor(max(tokens, 1.0), dtype=micro_mask.dtype))
    return micro_mask.shape[0] / rows


def minibatch_step(tokens: TokenBatch, rows: torch.Tensor, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                   micro_loss: MicroLoss, *, micro_batch_tokens: int | None, max_grad_norm: float, loss_agg: str,
                   step: int, what: str, dist: Distributed = SINGLE_PROCESS,
                   loss_mask: torch.Tensor | None = None) -> tuple[float, float] | None:
    """One optimizer step on `rows` of `tokens`, gradients accumulated over token-budget micro-batches.

    `micro_loss(index, sub_batch, record)` returns a micro-batch's aggregated loss; each is re-weighted so the
    summed gradient equals the minibatch's. Returns (loss, grad norm), or None when a non-finite loss or
    gradient (on any rank) skipped the step (weights untouched). `loss_mask` ([B, R], default the response mask):
    the tokens the loss counts, which the micro-batch weights normalise by (the forward runs over every response
    token either way).
    """
    counted = tokens.response_mask if loss_mask is None else loss_mask
    minibatch_mask = counted[rows]
    micros = split_by_token_budget(tokens.select(rows), micro_batch_tokens) if len(rows) else []
    passes = [(rows[torch.as_tensor(micro)], True) for micro in micros]
    if dist.active:
        global_tokens, global_rows = dist.all_reduce([float(minibatch_mask.sum()), float(len(rows))])
        most = int(dist.all_reduce([float(len(micros))], op="max")[0])
        filler = rows[:1] if len(rows) else torch.zeros(1, dtype=torch.long)
        passes += [(filler, False)] * (most - len(micros))
    optimizer.zero_grad(set_to_none=True)
    # the last step's gradients and the earlier passes' activations are free but still resident in the CPU heap:
    # hand them back so this minibatch's peak (gradients + activations) does not sit on top of them
    release_freed_memory()
    total = 0.0
    finite = True
    for index, real in passes:
        sub = tokens.select(index)
        loss = micro_loss(index, sub, real)
        finite = bool(torch.isfinite(loss))
        if dist.active:  # every rank skips together
            finite = dist.all_reduce([float(finite)], op="min")[0] > 0
        if not finite:
            break
        if not dist.active:
            weight = micro_weight(counted[index], minibatch_mask, loss_agg)
        else:
            weight = _global_micro_weight(counted[index], global_tokens, global_rows, loss_agg) if real else 0.0
        (loss * (weight * dist.world_size)).backward()
        total += float(loss.detach()) * weight
    if finite:
        grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
        finite = bool(torch.isfinite(torch.tensor(grad_norm)))
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        logger.warning("step %d: non-finite %s loss or gradient, update skipped (weights untouched)", step, what)
        return None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no gradient memory held through generation and log-prob passes
    if dist.active:
        total = dist.all_reduce([total])[0]
    return total, grad_norm
