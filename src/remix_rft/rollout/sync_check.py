"""The weight-sync check: after every push of the policy's weights to a generation engine that holds its own copy
(a vLLM engine, the pipelined job's snapshot), the engine's log-probs of a fixed probe sequence must agree with the
trainer's, or the run stops with one line naming the engine and the gap.

Why: an engine that silently misses a push samples an older policy while the loss assumes the current one. verl
#7495: a LoRA adapter that never reached vLLM passed for staleness for two months. The probe is one short sequence
scored teacher-forced at temperature 1, so the check costs one forward of ~30 tokens on each side (`time/sync_check`).

Bounds (mean |engine - trainer| over the probe's response tokens), measured on the embedded model on a 2-core AMD
EPYC with AVX512-BF16 (2026-12-06): float32 vLLM against our float32 trainer 1.1e-5 (max 2.6e-5), a float32
snapshot 0 (bit-identical), a LoRA snapshot under bf16 2e-3; bf16 vLLM against our bf16 trainer 0.035 (max 0.12):
rounding, so the bounds are 1e-3 (float32) and 0.15 (bf16). In float32 any missed push after an update is caught;
in bf16 only a miss that moved the probe by more than the rounding floor is (a LoRA adapter that never arrives,
after some steps). `rollout.sync_check_bound` overrides them. Cost: on that CPU, shared with a training run, a
float32 vLLM check took 5.4 s (the push 2.8 s): `rollout.sync_check=false` where that matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from remix_rft.batching import DECODER_TOKENS, collate, token_logprobs
from remix_rft.errors import UserError
from remix_rft.models import autocast_context

PROBE_PROMPT = "What is 12 + 30? Put the final answer within \\boxed{}."
PROBE_RESPONSE = " 12 + 30 = 42, so the final answer is \\boxed{42}."
DEFAULT_BOUNDS = {"float32": 1e-3, "bfloat16": 0.15}


class WeightSyncError(UserError, RuntimeError):
    """An engine's weights are not the trainer's after a sync."""


class WeightSyncCheck:
    """The probe sequence, the trainer's log-probs of it, and the comparison with an engine's."""

    def __init__(self, tokenizer, bf16: bool, bound: float | None = None, rank: int = 0):
        self.prompt_ids: list[int] = tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
        self.response_ids: list[int] = tokenizer(PROBE_RESPONSE, add_special_tokens=False)["input_ids"]
        self.bf16, self.rank = bf16, rank
        self.bound = bound if bound is not None else DEFAULT_BOUNDS["bfloat16" if bf16 else "float32"]
        self.last_gap: float | None = None

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """`model`'s log-probs (temperature 1) of the probe response, as the trainer computes them."""
        was_training = model.training
        model.eval()
        batch = collate([self.prompt_ids], [self.response_ids], pad_token_id=0).to(device)
        with autocast_context(device, self.bf16):
            with DECODER_TOKENS.excluded():  # a probe, not the step's work (perf.py)
                logp, _ = token_logprobs(model, batch, temperature=1.0)
        model.train(was_training)
        return logp[0, :len(self.response_ids)].float().cpu()

    def verify(self, engine: str, engine_logprobs: Sequence[float] | torch.Tensor, trainer_logprobs: torch.Tensor,
               reduce_max: Callable[[float], float] | None = None) -> float:
        """The mean |gap| over the probe's tokens; raises WeightSyncError (one line) above the bound. `reduce_max`
        (torchrun: the maximum over ranks) makes every rank stop together when one rank's engine missed the push."""
        gap = float((torch.as_tensor(engine_logprobs, dtype=torch.float32) - trainer_logprobs).abs().mean())
        if reduce_max is not None:
            gap = reduce_max(gap)
        self.last_gap = gap
        if not gap <= self.bound:  # NaN fails too
            raise WeightSyncError(
                f"weight-sync check failed on rank {self.rank}: after the weight sync the {engine}'s log-probs of the "
                f"probe sequence differ from the trainer's by {gap:.3g} on average (the largest over ranks; bound "
                f"{self.bound:g}), so it "
                f"would sample other weights than the loss assumes; see docs/guides/troubleshooting.md "
                f"(rollout.sync_check=false turns the check off)")
        return gap

    def check_engine(self, engine: str, engine_score: Callable[[list[int], list[int]], Sequence[float]],
                     model: torch.nn.Module, device: torch.device,
                     reduce_max: Callable[[float], float] | None = None) -> float:
        """Score the probe with the engine (`engine_score(prompt_ids, response_ids)`) and with `model`; compare."""
        return self.verify(engine, engine_score(self.prompt_ids, self.response_ids), self.logprobs(model, device),
                           reduce_max)
