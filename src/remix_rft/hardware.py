"""What the machine computes in: CPU features, the kernels torch dispatches to, and the precision `auto` picks.

Two users running the same config on an AVX2 CPU and on one with AMX get different numbers, because `model.dtype=auto`
runs float32 on the first and bf16 autocast on the second (on AVX512-BF16 without AMX: whichever matmul is measured
faster). Every run records this (run_info.json) so that the difference is explained, not guessed at.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
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


def cache_dir() -> Path:
    """Where converted models and machine measurements live: $REMIX_CACHE_DIR, else $XDG_CACHE_HOME/remix-rft, else
    ~/.cache/remix-rft."""
    if os.environ.get("REMIX_CACHE_DIR"):
        return Path(os.environ["REMIX_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "remix-rft"
    return Path.home() / ".cache" / "remix-rft"


def amx_cpu() -> bool:
    """True where torch sees AMX tiles (a VM may hide them though the chip has them: /proc/cpuinfo then omits amx_*)."""
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


# bf16 autocast pays only where bf16 matmuls outrun float32's. With AMX they do; with AVX512-BF16 alone it depends on
# the chip: an AMD EPYC with AVX512-BF16 ran the default job's GRPO step 1.47x faster in bf16, an Intel Xeon that
# exposes no AMX 1.60x slower (its bf16 matmuls at 0.52-0.71x float32's; docs/benchmarks/precision.md). Below this measured speedup of a
# model-shaped matmul, `auto` keeps float32 (bf16 also costs casts and a wider gap between sampler and trainer).
BF16_MIN_SPEEDUP = 1.2
_SPEEDUP_SHAPE = (2048, 576, 1536)  # tokens x hidden x MLP width: the default model's most common matmul


def _measure_bf16_speedup(rounds: int = 3, repeats: int = 3) -> float:
    """bf16 / float32 throughput of one matmul shape, the best of interleaved rounds (so load hits both alike)."""
    import torch

    m, k, n = _SPEEDUP_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, w = torch.randn(m, k, generator=generator), torch.randn(n, k, generator=generator)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    pairs = {dtype: (a.to(dtype), w.to(dtype)) for dtype in best}
    with torch.no_grad():
        for x, y in pairs.values():
            torch.nn.functional.linear(x, y)  # warm-up: kernel selection, thread pool
        for _ in range(rounds):
            for dtype, (x, y) in pairs.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    torch.nn.functional.linear(x, y)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


@functools.cache
def bf16_matmul_speedup() -> float:
    """How much faster a bf16 matmul runs than a float32 one on this CPU: measured once per machine and thread count
    (about a second), cached in the remix-rft cache folder (bf16_speedup.json)."""
    import torch

    key = f"{cpu_model_name()}|{torch.get_num_threads()} threads|torch {torch.__version__}"
    path = cache_dir() / "bf16_speedup.json"
    cached = read_json_cache(path)
    if isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key])
    cached[key] = _measure_bf16_speedup()
    write_json_cache(path, cached)  # a read-only cache only costs a measurement per process
    return cached[key]


def read_json_cache(path: Path) -> dict[str, Any]:
    """A machine's cached measurements (empty when the file is missing or unreadable)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def write_json_cache(path: Path, values: dict[str, Any]) -> None:
    """Replace the cache file atomically (concurrent processes each write a whole file); a failure is ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{id(values)}.tmp")
        temporary.write_text(json.dumps(values, indent=2) + "\n")
        temporary.replace(path)
    except OSError:
        pass


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
    if not native_cpu_bf16():
        return "float32", "CPU without native bf16 (no AVX512-BF16 or AMX)"
    if amx_cpu():
        return "bfloat16", "CPU with AMX (native bf16 tiles)"
    speedup = bf16_matmul_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return "bfloat16", f"CPU with AVX512-BF16, no AMX: bf16 matmuls measured {speedup:.2f}x float32's speed"
    return "float32", (f"CPU with AVX512-BF16 but no AMX, where bf16 matmuls measured {speedup:.2f}x float32's "
                       f"speed (bf16 needs {BF16_MIN_SPEEDUP}x)")


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
