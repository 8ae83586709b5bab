"""The policy's weights as full tensors, one at a time: what a rollout engine (vLLM's weight push) or the pipelined
generation's snapshot (rollout/pipeline.py) copies from the trained policy. No engine is imported here."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from remix_rft import lora


def iter_full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter, one at a time, in checkpoint naming.

    A sharded tensor (DTensor, as FSDP2 holds them) is gathered alone, so at most one full tensor exists at once.
    Tied weights appear once, under their first name (as the HF checkpoint stores them). A LoRA policy is sent
    merged, under the base model's names (the engine holds the plain model; see lora.py).
    """
    if lora.has_adapters(model):
        yield from lora.merged_named_tensors(model)
        return
    yield from unmerged_full_tensors(model)


def unmerged_full_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter as the model holds it (a LoRA model's base weights and adapters
    apart), one at a time, a sharded one gathered alone; tied weights once."""
    for name, parameter in model.named_parameters(remove_duplicate=True):
        tensor = parameter.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        yield name, tensor
