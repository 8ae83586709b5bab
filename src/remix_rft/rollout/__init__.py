"""Rollout engines: prompts in, sampled responses with behaviour log-probs out."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import Rollout, RolloutEngine, SamplingParams
from .hf import HFRolloutEngine

ENGINES: dict[str, type] = {"hf": HFRolloutEngine}


def build_engine(
    name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> RolloutEngine:
    """The engine registered under `name`, built on `model` / `tokenizer` with engine-specific `options`."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known engines: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](model, tokenizer, **options)


__all__ = ["ENGINES", "HFRolloutEngine", "Rollout", "RolloutEngine", "SamplingParams", "build_engine"]
