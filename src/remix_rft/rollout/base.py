"""The rollout-engine interface: prompts in, sampled responses with behaviour log-probs out.

The trainer and the evaluator only talk to `RolloutEngine`, so another backend (vLLM, a server) can be
added without touching them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    """How responses are sampled. `greedy=True` ignores temperature/top_p/top_k."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    greedy: bool = False
    seed: int | None = None

    @property
    def logprob_temperature(self) -> float:
        """Temperature that behaviour log-probs are computed at (1.0 when greedy)."""
        return 1.0 if self.greedy else self.temperature


@dataclass
class Rollout:
    """One sampled response.

    `logprobs[i]` is the behaviour log-prob of `response_ids[i]` under the distribution it was drawn from:
    log_softmax(logits / temperature) over the top-k / top-p kept tokens, renormalised (as vLLM's processed
    log-probs). The trainer's teacher-forced log-probs use the same definition (batching.token_logprobs with the
    sampler's truncation), so for the generating policy they agree to float precision.
    """

    prompt_index: int  # index into the prompts passed to generate()
    sample_index: int  # 0..samples_per_prompt-1
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str  # "eos" or "length"
    logprobs: list[float] = field(default_factory=list)
    # the entropy of that distribution at each token, where the engine records it (the HF engine's `with_entropy`:
    # the trainer's pi_k entropy metric when it takes the sampler's log-probs as pi_k's)
    entropies: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that turns prompts into sampled responses."""

    def generate(
        self, prompts: Sequence[str], samples_per_prompt: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """Sample `samples_per_prompt` responses for each prompt (already chat-formatted text).

        Returns them grouped by prompt: all samples of prompt 0, then prompt 1, ...
        """
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (a no-op for an engine that shares the model)."""
        ...
