"""What the machine computes in: CPU features, the kernels torch dispatches to, and the precision `auto` picks.

Two users running the same config on an AVX2 CPU and on one with AVX512-BF16/AMX get different numbers, because
`model.dtype=auto` runs float32 on the first and bf16 autocast on the second. Every run records this (run_info.json)
so that the difference is explained, not guessed at.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# CPU flags that change which kernels run (and so the numbers): vector width, native bf16 dot products, AMX tiles
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
# `REMIX_RFT_AUTO_DTYPE=float32|bfloat16` overrides what `model.dtype=auto` picks on the CPU: to reproduce the other
# CPU kind's precision (CI runs the bf16 path on AVX2 machines with it), or to keep float32 on a bf16-capable CPU
AUTO_DTYPE_ENV = "REMIX_RFT_AUTO_DTYPE"


def cpu_model_name() -> str:
    """The CPU's marketing name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Platinum 8488C"); platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """Which of CPU_FLAGS the CPU reports (Linux /proc/cpuinfo; empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return {flag: flag in present for flag in CPU_FLAGS}
    return {}


def native_cpu_bf16() -> bool:
    """True where torch has native bf16 CPU kernels: AVX512-BF16 or AMX (otherwise bf16 is emulated, ~3x slower)."""
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def auto_dtype_override() -> str | None:
    """The dtype `REMIX_RFT_AUTO_DTYPE` asks `auto` to pick on the CPU, or None; a bad value is an error."""
    value = os.environ.get(AUTO_DTYPE_ENV, "").strip()
    if not value:
        return None
    if value not in ("float32", "bfloat16"):
        raise ValueError(f"{AUTO_DTYPE_ENV}={value!r}: expected float32 or bfloat16")
    return value


def auto_dtype(device: str) -> tuple[str, str]:
    """(dtype, why) that `model.dtype=auto` resolves to on `device` (a `model.device` value)."""
    import torch

    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA GPU with bf16 support"
        return "float32", "CUDA GPU without bf16 support"
    override = auto_dtype_override()
    if override is not None:
        return override, f"{AUTO_DTYPE_ENV}={override}"
    if native_cpu_bf16():
        return "bfloat16", "CPU with native bf16 (AVX512-BF16 or AMX)"
    return "float32", "CPU without native bf16 (no AVX512-BF16 or AMX)"


def run_info(config: Any) -> dict[str, Any]:
    """The machine and precision facts of a run (written to `run_info.json` beside its config.yaml)."""
    import torch
    import transformers

    from remix_rft import __version__

    model = config.model
    why = auto_dtype(model.device)[1] if model.dtype == "auto" and not model.autocast_bf16 else "set in the config"
    info: dict[str, Any] = {
        "remix_rft": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "cpu": {"model": cpu_model_name(), "cores": os.cpu_count(), "flags": cpu_flags(),
                "torch_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_cpu_bf16(),
                "torch_threads": torch.get_num_threads()},
        "precision": {"requested": "bfloat16" if model.autocast_bf16 else model.dtype,
                      "compute_dtype": model.compute_dtype, "why": why,
                      "frozen_dtype": model.frozen_storage_dtype, "lm_head_dtype": model.lm_head_compute_dtype,
                      "auto_dtype_env": os.environ.get(AUTO_DTYPE_ENV) or None},
    }
    if torch.cuda.is_available():
        info["cuda"] = {"device": torch.cuda.get_device_name(), "version": torch.version.cuda,
                        "count": torch.cuda.device_count()}
    return info


def precision_summary(info: dict[str, Any]) -> str:
    """One line for the log: the precision a run computes in and why."""
    precision = info["precision"]
    return (f"precision: {precision['compute_dtype']} ({precision['why']}; model.dtype={precision['requested']}), "
            f"LM head {precision['lm_head_dtype']}, frozen copies {precision['frozen_dtype']}; "
            f"CPU {info['cpu']['model']} (torch kernels: {info['cpu']['torch_capability']})")
