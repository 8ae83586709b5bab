"""Frozen log-prob providers: the base reference of the KL penalty and the lagged precedent policy of KL-Convex.

Policy reincarnation (METHOD.md) swaps the base: the current policy becomes the reference.
"""

from __future__ import annotations

import contextlib

import torch

from remix_rft import algos
from remix_rft.batching import TokenBatch, token_logprobs
from remix_rft.config import Config
from remix_rft.distributed import Distributed
from remix_rft.errors import ConfigError
from remix_rft.models import float32_weights_per_module, frozen_copy


def kl_term(logp: torch.Tensor, reference_logp: torch.Tensor, precedent_logp: torch.Tensor | None,
            weight: float, kind: str) -> torch.Tensor:
    """Per-token KL-Convex penalty; plain KL to the reference when the precedent term has no weight."""
    if precedent_logp is None or weight >= 1.0:
        return algos.kl_penalty(logp, reference_logp, kind)
    return algos.kl_convex(logp, reference_logp, precedent_logp, weight, kind=kind)


class FrozenReferences:
    """The base reference (when the KL coefficient is > 0) and the lagged precedent pi_{k-1} (KL-Convex with
    `remix.precedent=lagged`); either is None when the config does not need it."""

    def __init__(self, policy: torch.nn.Module, config: Config, dist: Distributed | None = None):
        """Copies of `policy` (before it is sharded), each FSDP2-sharded under torchrun (`dist`)."""
        self.uses_kl = config.algorithm.kl_coef > 0
        remix = config.remix
        needs_lagged = self.uses_kl and remix.enabled and remix.kl_convex and remix.precedent == "lagged"
        # never trained, so no float32 master: stored in the compute dtype, or bf16 when model.frozen_dtype asks
        dtype = config.model.frozen_storage_dtype
        # bf16 storage under float32 compute: each module's weights are upcast for its own forward only
        self.upcast = dtype == "bfloat16" and not config.model.bf16
        if self.upcast and dist is not None and dist.active:
            raise ConfigError("config key 'model.frozen_dtype': bfloat16 storage under float32 compute is "
                              "single-process only; under torchrun use model.dtype=bfloat16 or frozen_dtype=auto")
        shard = (lambda model: dist.shard(model, bf16=config.model.bf16)) if dist is not None else (lambda model: model)
        self.chunk_tokens = config.train.logprob_chunk_tokens
        self.reference = shard(frozen_copy(policy, dtype)) if self.uses_kl else None
        self.lagged = shard(frozen_copy(policy, dtype)) if needs_lagged else None

    def _logprobs(self, model: torch.nn.Module, tokens: TokenBatch, temperature: float,
                  max_tokens: int | None) -> torch.Tensor:
        upcast = float32_weights_per_module(model) if self.upcast else contextlib.nullcontext()
        with upcast:
            return token_logprobs(model, tokens, temperature, max_tokens=max_tokens,
                                  chunk_tokens=self.chunk_tokens)[0].float()

    def reference_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None) -> torch.Tensor:
        return self._logprobs(self.reference, tokens, temperature, max_tokens)

    def precedent_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None,
                           proximal_logp: torch.Tensor) -> torch.Tensor:
        """pi_{k-1}'s log-probs; with `remix.precedent=proximal` pi_k's log-probs stand in for them."""
        if self.lagged is None:
            return proximal_logp
        return self._logprobs(self.lagged, tokens, temperature, max_tokens)

    def advance_precedent(self, policy: torch.nn.Module) -> None:
        """The lagged policy now holds pi_k, the precedent of the next step."""
        if self.lagged is not None:
            self.lagged.load_state_dict(policy.state_dict())

    def reincarnate(self, policy: torch.nn.Module) -> None:
        """Policy reincarnation: the current policy becomes the KL base."""
        if self.reference is not None:
            self.reference.load_state_dict(policy.state_dict())
