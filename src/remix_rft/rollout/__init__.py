"""Rollout engines: prompts in, sampled responses with behaviour log-probs out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import Rollout, RolloutEngine, SamplingParams
from .hf import HFRolloutEngine

if TYPE_CHECKING:
    from remix_rft.config import Config


def _vllm_engine(*args: Any, **options: Any) -> RolloutEngine:
    from .vllm import VLLMRolloutEngine  # vllm is optional: imported only when asked for

    return VLLMRolloutEngine(*args, **options)


# one entry per name of config.ROLLOUT_ENGINES (the light table config validation reads; tests check they agree)
ENGINES: dict[str, Any] = {"hf": HFRolloutEngine, "vllm": _vllm_engine}


def build_engine(
    name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **options: Any
) -> RolloutEngine:
    """The engine registered under `name`, built on `model` / `tokenizer` with engine-specific `options`."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known engines: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](model, tokenizer, **options)


def engine_options(config: Config) -> dict[str, Any]:
    """The keyword options `build_engine` passes to the engine named by `config.rollout.engine`."""
    from remix_rft.config import reuses_sampler_logprobs

    ro = config.rollout
    options: dict[str, Any] = {"max_batch_size": ro.max_batch_size, "autocast_bf16": config.model.bf16}
    if ro.engine == "hf" and reuses_sampler_logprobs(config)[0]:  # pi_k's entropy metric, from the sampler
        options["with_entropy"] = True
    if ro.engine == "hf":  # a prompt's samples share its prefill
        options["share_prompts"] = config.train.shared_prompt_forward
    if ro.engine == "vllm":
        options.update(
            gpu_memory_utilization=ro.gpu_memory_utilization, tensor_parallel_size=ro.tensor_parallel_size,
            max_model_len=ro.max_model_len, seed=config.train.seed,
            # pipelined: the engine generates while the trainer updates, so it never sleeps
            enable_sleep_mode=False if ro.pipeline else ro.enable_sleep_mode,
            dtype=ro.dtype or ("bfloat16" if config.model.bf16 else None),  # the compute dtype, not fp32 masters
            kv_cache_memory_bytes=int(ro.kv_cache_gb * 2**30) if ro.kv_cache_gb else None,
        )
    return options


__all__ = ["ENGINES", "HFRolloutEngine", "Rollout", "RolloutEngine", "SamplingParams", "build_engine", "engine_options"]
