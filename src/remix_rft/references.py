"""Frozen log-prob providers: the base reference of the KL penalty and the lagged precedent policy of KL-Convex.

Policy reincarnation (METHOD.md) swaps the base: the current policy becomes the reference.
Full finetuning keeps frozen copies of the model (`FrozenReferences`); LoRA keeps none (`AdapterReferences`): the
base reference is the policy with its adapters off, the precedent and a reincarnated reference are adapter snapshots.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

from remix_rft import algos, lora
from remix_rft.batching import TokenBatch, token_logprobs
from remix_rft.config import Config
from remix_rft.distributed import Distributed
from remix_rft.models import float32_weights_per_module, frozen_copy

logger = logging.getLogger(__name__)

# `Distributed.gathered`: a sharded model's full parameters for a block of passes (a no-op in one process)
Gathered = Callable[[torch.nn.Module | None], contextlib.AbstractContextManager]


def _not_sharded(model: torch.nn.Module | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


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
        needs_lagged = config.lagged_precedent
        # never trained, so no float32 master: stored in the compute dtype, or bf16 when model.frozen_dtype asks
        dtype = config.model.frozen_storage_dtype
        # bf16 storage under float32 compute: each module's weights are upcast for its own forward only
        self.upcast = dtype == "bfloat16" and not config.model.bf16
        if self.upcast and dist is not None and dist.active:
            # the per-module upcast is single-process only; the quickstart asks for bf16 storage, and `auto` may pick
            # float32 compute (AVX2, or AVX512-BF16 with slow bf16), so torchrun stores the copies in float32 instead
            if dist.is_main:
                logger.warning("model.frozen_dtype=bfloat16 under float32 compute is single-process only: under "
                               "torchrun the frozen copies are stored in float32")
            dtype, self.upcast = "float32", False
        shard = (lambda model: dist.shard(model, bf16=config.model.bf16)) if dist is not None else (lambda model: model)
        self.chunk_tokens = config.train.logprob_chunk_tokens
        self.share_prompts = config.train.shared_prompt_forward
        self.reference = shard(frozen_copy(policy, dtype)) if self.uses_kl else None
        self.lagged = shard(frozen_copy(policy, dtype)) if needs_lagged else None

    def _logprobs(self, model: torch.nn.Module, tokens: TokenBatch, temperature: float,
                  max_tokens: int | None) -> torch.Tensor:
        upcast = float32_weights_per_module(model) if self.upcast else contextlib.nullcontext()
        with upcast:
            return token_logprobs(model, tokens, temperature, max_tokens=max_tokens,
                                  chunk_tokens=self.chunk_tokens, share_prompts=self.share_prompts)[0].float()

    def reference_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None,
                           gathered: Gathered = _not_sharded) -> torch.Tensor:
        with gathered(self.reference):
            return self._logprobs(self.reference, tokens, temperature, max_tokens)

    def precedent_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None,
                           proximal_logp: torch.Tensor, gathered: Gathered = _not_sharded) -> torch.Tensor:
        """pi_{k-1}'s log-probs; with `remix.precedent=proximal` pi_k's log-probs stand in for them."""
        with gathered(self.lagged):  # every rank enters it, even with nothing to gather
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


class AdapterReferences:
    """The references of a LoRA policy without a copy of the model (module doc). Same interface as
    `FrozenReferences`: `reference` / `lagged` are the policy itself (what a sharded pass must gather) or None when
    the config does not need them; the adapter snapshots are a few MB each."""

    def __init__(self, policy: torch.nn.Module, config: Config):
        self.policy = policy
        self.uses_kl = config.algorithm.kl_coef > 0
        self.needs_lagged = config.lagged_precedent
        self.chunk_tokens = config.train.logprob_chunk_tokens
        self.share_prompts = config.train.shared_prompt_forward
        self.reference_adapter: dict[str, torch.Tensor] | None = None  # after reincarnation: the policy's adapter then
        self.precedent_adapter: dict[str, torch.Tensor] | None = None  # pi_{k-1}'s adapter; None: pi_k's (step 1)

    @property
    def reference(self) -> torch.nn.Module | None:
        return self.policy if self.uses_kl else None

    @property
    def lagged(self) -> torch.nn.Module | None:
        return self.policy if self.needs_lagged else None

    def _logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None) -> torch.Tensor:
        return token_logprobs(self.policy, tokens, temperature, max_tokens=max_tokens,
                              chunk_tokens=self.chunk_tokens, share_prompts=self.share_prompts)[0].float()

    def reference_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None,
                           gathered: Gathered = _not_sharded) -> torch.Tensor:
        """The base model (adapters off), or after reincarnation the policy with the adapter it had then. The
        snapshot goes into the sharded parameters before they are gathered (a gathered copy is not written back)."""
        swap = lora.adapters_disabled(self.policy) if self.reference_adapter is None \
            else lora.adapter_swapped_in(self.policy, self.reference_adapter)
        with swap, gathered(self.policy):
            return self._logprobs(tokens, temperature, max_tokens)

    def precedent_logprobs(self, tokens: TokenBatch, temperature: float, max_tokens: int | None,
                           proximal_logp: torch.Tensor, gathered: Gathered = _not_sharded) -> torch.Tensor:
        """pi_{k-1}'s log-probs: its adapter swapped in; at the first step pi_{k-1} is pi_k (as a copy made at
        start would be), and with `remix.precedent=proximal` pi_k's log-probs stand in."""
        if not self.needs_lagged or self.precedent_adapter is None:
            return proximal_logp
        with lora.adapter_swapped_in(self.policy, self.precedent_adapter), gathered(self.policy):
            return self._logprobs(tokens, temperature, max_tokens)

    def advance_precedent(self, policy: torch.nn.Module) -> None:
        if self.needs_lagged:
            self.precedent_adapter = lora.adapter_snapshot(policy)

    def reincarnate(self, policy: torch.nn.Module) -> None:
        if self.uses_kl:
            self.reference_adapter = lora.adapter_snapshot(policy)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor] | None]:
        return {"reference_adapter": self.reference_adapter, "precedent_adapter": self.precedent_adapter}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor] | None]) -> None:
        self.reference_adapter = state.get("reference_adapter")
        self.precedent_adapter = state.get("precedent_adapter")


def build_references(policy: torch.nn.Module, config: Config,
                     dist: Distributed | None = None) -> FrozenReferences | AdapterReferences:
    """Adapter snapshots for a LoRA policy, frozen copies otherwise."""
    if config.model.lora.enabled:
        return AdapterReferences(policy, config)
    return FrozenReferences(policy, config, dist)
