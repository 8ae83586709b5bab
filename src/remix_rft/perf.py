"""Throughput accounting of a training step: tokens/s per phase and model-FLOPs utilisation (MFU).

Model FLOPs follow the usual convention (Kaplan et al.; PaLM's MFU): 2·N FLOPs per token for a forward pass without
grad (generation: prompt + generated tokens; the no-grad log-prob passes) and 6·N per token for a training pass
(forward + backward), N the parameter count. Attention's sequence-length term and gradient-checkpointing recompute
are not counted, so MFU is comparable across settings. The peak is `train.peak_tflops` when configured, else a
matmul benchmark (the faster of float32 and, under bf16, bfloat16), run once per device and cached (`cache_dir()/peak_flops.json`): an
*achievable* peak, somewhat below a data-sheet number.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch

from remix_rft.batching import DECODER_TOKENS
from remix_rft.hardware import cache_dir, read_json_cache, write_json_cache


@dataclass(frozen=True)
class StepWork:
    """What one training step computed: enough to count its model FLOPs."""

    parameters: int  # policy parameters (N)
    critic_parameters: int  # 0 without a critic
    generated_tokens: int
    prompt_tokens: int  # prompt tokens generation prefilled (each distinct prompt once)
    batch_tokens: int  # real (unpadded) prompt + response tokens of the training batch
    logprob_passes: float  # no-grad policy-sized passes over the batch (pi_k, reference, precedent; a share of one
    # where pi_k's pass ran on some rows only: rollout.reuse_sampler_logprobs)
    update_passes: int  # passes of minibatch updates over the batch (remix.updates_per_batch)
    # tokens the policy-sized log-prob forwards ran through a decoder (batching.DECODER_TOKENS) in the no-grad passes
    # and in the update: fewer than batch_tokens x passes where a shared prompt forward ran a group's prompt once.
    # None: counted from batch_tokens
    logprob_decoder_tokens: int | None = None
    update_decoder_tokens: int | None = None

    def flops(self) -> dict[str, float]:
        n, critic = self.parameters, self.critic_parameters
        logprob_tokens = self.batch_tokens * self.logprob_passes if self.logprob_decoder_tokens is None \
            else self.logprob_decoder_tokens
        update_tokens = self.batch_tokens * self.update_passes if self.update_decoder_tokens is None \
            else self.update_decoder_tokens
        return {
            "generation": 2.0 * n * (self.prompt_tokens + self.generated_tokens),
            "logprobs": 2.0 * (n * logprob_tokens + critic * self.batch_tokens),
            "update": 6.0 * (n * update_tokens + critic * self.batch_tokens * self.update_passes),
        }


def throughput_metrics(work: StepWork, times: dict[str, float], peak_flops: float) -> dict[str, float]:
    """`perf/*` metrics of one step from its work and its `time/*` phase durations (seconds)."""
    flops = work.flops()
    out: dict[str, float] = {"perf/peak_tflops": peak_flops / 1e12}
    if times.get("generation", 0) > 0:
        out["perf/generation_tokens_per_s"] = work.generated_tokens / times["generation"]
        out["perf/generation_mfu"] = flops["generation"] / (times["generation"] * peak_flops)
    if times.get("logprobs", 0) > 0:
        out["perf/logprob_tokens_per_s"] = work.batch_tokens * work.logprob_passes / times["logprobs"]
    if times.get("update", 0) > 0:
        out["perf/update_tokens_per_s"] = work.batch_tokens * work.update_passes / times["update"]
        out["perf/update_mfu"] = flops["update"] / (times["update"] * peak_flops)
    if times.get("step", 0) > 0:
        out["perf/mfu"] = sum(flops.values()) / (times["step"] * peak_flops)
    return out


def _device_key(device: torch.device, bf16: bool) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"
    # v2: a bf16 peak is the better of bf16 and float32 matmuls (v1 cached bf16 alone, which on CPUs without bf16
    # instructions is emulated and far below what the step's float32 kernels reach, giving MFU > 100%)
    return f"{device.type}|{name}|{'bfloat16' if bf16 else 'float32'}|v2"


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int | None = None,
                         seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls of `size` in `dtype` on `device` over ~`seconds` of repeats."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up (kernel selection, thread pool)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


_MEASURED: dict[str, float] = {}  # this process's peaks by device key


def peak_flops_per_s(device: torch.device, bf16: bool, configured_tflops: float | None = None) -> float:
    """The MFU denominator in FLOP/s: configured, else the best of every measurement on this machine. Each process
    measures once (about a second) and keeps the larger of that and the cached value: a first measurement taken while
    other work shared the cores (a study, a test suite) would otherwise stay the machine's peak, and MFU read > 100%."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    key = _device_key(device, bf16)
    if key in _MEASURED:  # called every step: measured once per process
        return _MEASURED[key]
    path = cache_dir() / "peak_flops.json"
    cached = read_json_cache(path)
    measured = measure_matmul_flops(device, torch.float32)
    if bf16:  # autocast leaves some matmuls in float32, and a CPU may emulate bf16: the faster kernel bounds the step
        measured = max(measured, measure_matmul_flops(device, torch.bfloat16))
    previous = cached.get(key)
    if isinstance(previous, (int, float)) and previous > measured:
        measured = float(previous)
    cached[key] = _MEASURED[key] = measured
    write_json_cache(path, cached)  # a read-only cache only loses the best of earlier measurements
    return measured


def step_work(policy: torch.nn.Module, critic, references, batch, rollouts, plan, sampler_pi_k: bool = False,
              counted_since: tuple[int, int] | None = None) -> StepWork:
    """The model work of one trainer step (this rank's share under torchrun; parameter counts are global).
    `sampler_pi_k`: this step's fresh rows took pi_k from the sampler, so pi_k's pass ran on the other rows only.
    `counted_since`: a `DECODER_TOKENS.snapshot()` taken before the log-prob passes: the FLOP count then uses the
    tokens the policy-sized forwards ran since (no-grad: the passes; with grad: the update), not the batch's."""
    decoder_tokens = None if counted_since is None else DECODER_TOKENS.since(counted_since)
    tokens = batch.tokens.attention_mask.sum(dim=1)
    pi_k_share = 1.0
    if sampler_pi_k:
        passed = batch.is_replay | (batch.versions != plan.step)
        pi_k_share = float(tokens[passed].sum()) / max(float(tokens.sum()), 1.0)
    return StepWork(
        parameters=sum(p.numel() for p in policy.parameters()),
        critic_parameters=sum(p.numel() for p in critic.model.parameters()) if critic is not None else 0,
        generated_tokens=sum(len(r.response_ids) for r in rollouts),
        # a prompt's samples share its prefill (the HF engine's shared prefill, vLLM's prefix cache): once a prompt
        # (with train.shared_prompt_forward=false the HF engine prefills every sample's: MFU then reads low)
        prompt_tokens=sum(len(ids) for ids in {tuple(r.prompt_ids) for r in rollouts}),
        batch_tokens=int(batch.tokens.attention_mask.sum()),
        logprob_passes=pi_k_share + (references.reference is not None)
        + (references.lagged is not None and plan.kl_convex_weight < 1.0),
        update_passes=plan.updates_per_batch,
        logprob_decoder_tokens=None if decoder_tokens is None else decoder_tokens[0],
        update_decoder_tokens=None if decoder_tokens is None else decoder_tokens[1])
