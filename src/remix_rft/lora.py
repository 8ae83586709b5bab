"""LoRA adapters (PEFT) on the policy and the critic: injection, adapter snapshots, adapter-off passes, export.

With `model.lora.r > 0` the base weights are frozen and only low-rank adapters train. No frozen copy of the model is
made: the base reference is the policy with its adapters switched off, the lagged precedent (and, after policy
reincarnation, the reference) is a snapshot of the adapter weights alone, swapped in for a no-grad pass and out
again. Adapters are injected into the model itself (`peft.inject_adapter_in_model`), so the model keeps its class,
its `generate` and its FSDP2 block structure; the adapter's names carry PEFT's `.lora_A.default.` infix.

Exports: `save_adapter` writes a PEFT adapter folder (`PeftModel.from_pretrained(base, folder)` loads it) and
`merged_state_dict` the base weights with each adapter's product added, under the base model's own names, for a
plain `transformers` checkpoint and for engines that hold their own weights (vLLM).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER = "default"  # PEFT's adapter name: the infix `.lora_A.default.` in parameter names
_LORA_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.(?P<adapter>[^.]+)\.weight$")


def inject(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str] | str) -> nn.Module:
    """Add trainable LoRA adapters to `model` in place (the base weights are frozen); returns `model`.

    The adapters start as the identity (B = 0), so the adapted model computes exactly what the base does."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_adapter_parameter(name))
    return model


def has_adapters(model: nn.Module) -> bool:
    return any(_is_lora_layer(module) for module in model.modules())


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def is_adapter_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if is_adapter_parameter(name)]


def adapter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the adapter weights (a few MB; each a DTensor shard under FSDP2, as the parameter is)."""
    return {name: parameter.detach().clone() for name, parameter in adapter_parameters(model)}


@torch.no_grad()
def load_adapter_snapshot(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Copy a snapshot into the model's adapter weights in place (their optimizer state stays attached)."""
    parameters = dict(adapter_parameters(model))
    missing = set(parameters) ^ set(snapshot)
    if missing:
        raise ValueError(f"adapter snapshot does not match the model's adapters: {sorted(missing)[:4]}")
    for name, parameter in parameters.items():
        parameter.copy_(snapshot[name])


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model: every adapter switched off for the block (a no-op for a model without adapters)."""
    layers = [module for module in model.modules() if _is_lora_layer(module)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
            for parameter in _own_adapter_parameters(layer):
                parameter.requires_grad_(True)  # PEFT's enable_adapters may leave them frozen


def _own_adapter_parameters(layer: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in layer.named_parameters() if is_adapter_parameter("." + name)]


@contextlib.contextmanager
def adapter_swapped_in(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with `snapshot`'s adapter weights for the block; its own come back afterwards, bit for bit."""
    own = adapter_snapshot(model)
    load_adapter_snapshot(model, snapshot)
    try:
        yield
    finally:
        load_adapter_snapshot(model, own)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def lora_scaling(model: nn.Module) -> float:
    """alpha / r of the injected adapter."""
    config = model.peft_config[ADAPTER]
    return config.lora_alpha / config.r


def _merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + B @ A * alpha / r, computed in float32, in W's dtype."""
    return (weight.float() + b.float() @ a.float() * scaling).to(weight.dtype)


def merged_named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the adapted model's weights in the base model's naming, each adapted layer's weight
    with B @ A * alpha / r added. Sharded parameters are gathered one by one, and an adapted layer's weight is
    yielded as soon as its base weight and both factors are in (they come together in parameter order)."""
    scaling = lora_scaling(model)
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=True):
        match = _LORA_KEY_RE.match(name)
        if match:
            module, part = match["module"], match["which"]
        elif ".base_layer." in name:
            module, part = name.split(".base_layer.", 1)[0], name.rsplit(".", 1)[1]
            if part != "weight":  # a bias is not changed by the adapter
                yield f"{module}.{part}", _full(parameter)
                continue
        else:
            yield name, _full(parameter)
            continue
        parts = pending.setdefault(module, {})
        parts[part] = _full(parameter)
        if len(parts) == 3:
            yield f"{module}.weight", _merged_weight(parts["weight"], parts["A"], parts["B"], scaling)
            del pending[module]
    if pending:
        raise ValueError(f"adapted layers without their base weight or factors: {sorted(pending)[:4]}")


def merge_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """An adapted model's full state dict as the plain model's: `X.base_layer.weight` + B @ A * scaling under
    `X.weight`, the adapters dropped, every other tensor as it is."""
    merged: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = _LORA_KEY_RE.match(name)
        if match:
            factors.setdefault(match["module"], {})[match["which"]] = tensor
        else:
            merged[name.replace(".base_layer.", ".", 1)] = tensor
    for module, parts in factors.items():
        merged[f"{module}.weight"] = _merged_weight(merged[f"{module}.weight"], parts["A"], parts["B"], scaling)
    return merged


def adapter_state_from_peft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's saved names (`base_model.model.X.lora_A.weight`) back to the injected model's (`X.lora_A.default.weight`)."""
    out = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"base_model\.model\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight", name)
        if match is None:
            raise ValueError(f"not a LoRA adapter weight: {name!r}")
        out[f"{match['module']}.lora_{match['which']}.{ADAPTER}.weight"] = tensor
    return out


def load_adapter(model: nn.Module, directory: str | Path) -> None:
    """Load a PEFT adapter folder written by `save_adapter` into the model's injected adapters, in place."""
    from safetensors.torch import load_file

    load_adapter_snapshot(model, adapter_state_from_peft(load_file(str(Path(directory) / "adapter_model.safetensors"))))


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapted model as a plain model's state dict (base names, adapters merged), on the CPU."""
    full = {name: _full(tensor).cpu() for name, tensor in model.state_dict().items()}
    return {name: tensor.contiguous() for name, tensor in merge_state_dict(full, lora_scaling(model)).items()}


def peft_adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under PEFT's saved names (`base_model.model.<module>.lora_A.weight`), full tensors."""
    out = {}
    for name, parameter in adapter_parameters(model):
        match = _LORA_KEY_RE.match(name)
        out[f"base_model.model.{match['module']}.lora_{match['which']}.weight"] = _full(parameter).cpu().contiguous()
    return out


def save_adapter(model: nn.Module, directory: str | Path, base_model: str, write: bool = True) -> None:
    """A PEFT adapter folder: adapter_config.json + adapter_model.safetensors (loads with PeftModel.from_pretrained).

    Under FSDP2 every rank must call it (each adapter is gathered); only the one with `write` writes."""
    from safetensors.torch import save_file

    state = peft_adapter_state(model)
    if not write:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER]
    config.base_model_name_or_path = base_model
    config.task_type = "CAUSAL_LM"
    config.save_pretrained(str(directory))
    save_file(state, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})


def adapter_info(model: nn.Module) -> dict[str, Any]:
    """What the run log says of the adapters: rank, alpha, trainable and total parameter counts."""
    config = model.peft_config[ADAPTER]
    trainable = sum(p.numel() for _, p in adapter_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    layers = sum(_is_lora_layer(module) for module in model.modules())
    return {"r": config.r, "alpha": config.lora_alpha, "adapted_layers": layers, "trainable_params": trainable,
            "total_params": total}


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "adapter_config.json").read_text())
