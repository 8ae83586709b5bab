"""Host memory: hygiene between the phases of a step, and the allocator `remix-rft train` runs under.

glibc keeps memory that PyTorch frees on CPU (activations, log-prob chunks, the last step's gradients) in its heap
instead of returning it to the OS, so the resident set grows past what is live and the update's peak lands on top of
the earlier phases' leftovers. `release_freed_memory()` hands the free pages back (`malloc_trim`) before the update;
`return_free_pages()` does it for either allocator at each step's end, and `heap_allocated_mb()` reads the live heap
(the per-step memory metrics, README: Memory over long runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import MutableMapping

from remix_rft.errors import ConfigError


@functools.cache
def _libc_function(symbol: str, restype, *argtypes):
    """A function of the C library, typed, looked up once (find_library runs ldconfig), or None (macOS, musl, an
    older glibc without it, or no C library found)."""
    name = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes, function.restype = list(argtypes), restype
    return function


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS; True when glibc's malloc_trim ran and released some."""
    trim = _libc_function("malloc_trim", ctypes.c_int, ctypes.c_size_t)
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _jemalloc_mallctl():
    """jemalloc's `mallctl` when jemalloc is this process's malloc (preloaded, as `remix-rft train` runs), else None."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    mallctl.restype = ctypes.c_int
    return mallctl


JEMALLOC_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL


def return_free_pages() -> None:
    """Hand every free page the allocator holds back to the OS now: jemalloc purges all its arenas (it would after
    its decay time), glibc trims its heap. Called at a step's end, so that what stays resident between steps, and
    `memory/rss_mb` read there, is what the process still uses rather than how much a timer had purged so far."""
    mallctl = _jemalloc_mallctl()
    if mallctl is not None:
        mallctl(f"arena.{JEMALLOC_ALL_ARENAS}.purge".encode(), None, None, None, 0)
    else:
        release_freed_memory()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_allocated_mb() -> float:
    """Bytes the program holds allocated on the C heap now (tensors included), in MiB: jemalloc's
    `stats.allocated`, or glibc's in-use chunks (mallinfo2: heap + mmapped); NaN elsewhere. Unlike the resident
    set it does not count free memory the allocator keeps, so it is what a leak shows in step after step."""
    mallctl = _jemalloc_mallctl()
    if mallctl is not None:
        epoch = ctypes.c_uint64(1)
        size = ctypes.c_size_t(ctypes.sizeof(epoch))
        mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), size)  # refresh the stats
        allocated = ctypes.c_size_t(0)
        size = ctypes.c_size_t(ctypes.sizeof(allocated))
        if mallctl(b"stats.allocated", ctypes.byref(allocated), ctypes.byref(size), None, 0) == 0:
            return allocated.value / 2**20
        return float("nan")  # a jemalloc built without statistics
    mallinfo2 = _libc_function("mallinfo2", _MallInfo2)  # glibc 2.33+
    if mallinfo2 is None:
        return float("nan")
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


# --------------------------------------------------------------------------------------------------------------
# Bounded kernel caches: bf16 matmuls on CPU run through oneDNN, which compiles a primitive per distinct matmul
# shape and keeps it in two caches, PyTorch's ideep LRU (LRU_CACHE_CAPACITY) and oneDNN's own
# (ONEDNN_PRIMITIVE_CACHE_CAPACITY), 1,024 entries each by default. RL batches change shape at every micro-batch
# and generation length, so a bf16 run's resident memory grew step after step until both caches filled: measured
# (1,000 random [n, 576] x [576, 1536] bf16 matmul shapes, jemalloc) +650 MiB with the defaults, +185 MiB at 256,
# float32 (MKL, no such cache) +50 MiB. What is reused is within a pass: the layers share their few weight shapes,
# the decode steps theirs; a new micro-batch brings new token counts. At 256 the default bf16 job's peak still crept
# 3,011 -> 3,085 MiB over 10 steps as the caches filled; at 64 3,013 -> 3,034, at 16 flat at 3,007 from step 2,
# with the same seconds per step at 256, 64 and 16 (AVX512-BF16 EPYC, benchmarks/soak.py). 32: a margin over 16
# for the reuse. A value the user set is kept.
# --------------------------------------------------------------------------------------------------------------

KERNEL_CACHE_ENV = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
KERNEL_CACHE_CAPACITY = 32


def bound_kernel_caches(environ: MutableMapping[str, str] = os.environ) -> None:
    """Cap oneDNN's per-shape kernel caches (see above) unless set. Read when the caches are first used, so call it
    before the first bf16 matmul of the process (the CLI and the Trainer do)."""
    for name in KERNEL_CACHE_ENV:
        environ.setdefault(name, str(KERNEL_CACHE_CAPACITY))


# --------------------------------------------------------------------------------------------------------------
# jemalloc for `remix-rft train` on Linux
# --------------------------------------------------------------------------------------------------------------
# glibc's heap keeps the memory freed inside a forward/backward resident (interior free chunks are handed back only
# by malloc_trim), ~0.5 GB of the default job's peak; jemalloc purges freed pages over time and keeps the peak within
# ~0.1 GB of what is live. It must be loaded before the process starts (LD_PRELOAD), so the command line re-executes
# itself once with it, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu --enable-jemalloc`) and vLLM's CPU
# guide (tcmalloc) do. REMIX_RFT_ALLOCATOR: auto (jemalloc when installed), jemalloc (required), system (glibc).

ALLOCATOR_ENV = "REMIX_RFT_ALLOCATOR"
ALLOCATORS = ("auto", "jemalloc", "system")
# freed pages go back to the OS after ~1 s of disuse (jemalloc's default is 10 s), by a background thread
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def find_jemalloc(candidates: tuple[str, ...] = JEMALLOC_PATHS) -> str | None:
    """The jemalloc shared library on this machine (Debian/Ubuntu `libjemalloc2`, Fedora `jemalloc`): a path, else a
    soname the dynamic loader finds itself; None when it is not installed."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    return ctypes.util.find_library("jemalloc")


def active_allocator(maps: str = "/proc/self/maps") -> str:
    """'jemalloc' when it is loaded into this process, else 'system'."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as handle:
            return "jemalloc" if any("libjemalloc" in line for line in handle) else "system"
    except OSError:
        return "system"


def allocator_reexec_env(environ: dict[str, str], platform: str, jemalloc: str | None) -> dict[str, str] | None:
    """The environment to re-execute `remix-rft train` in so that jemalloc is loaded, or None to run as is.

    None when not on Linux, when REMIX_RFT_ALLOCATOR=system, when jemalloc is already preloaded (also what stops a
    second re-exec), or (auto) when it is not installed. REMIX_RFT_ALLOCATOR=jemalloc without it raises ConfigError.
    A MALLOC_CONF already set is kept.
    """
    choice = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice not in ALLOCATORS:
        raise ConfigError(f"environment variable {ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r}: must be one of "
                          f"{', '.join(ALLOCATORS)}")
    if choice == "system" or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    if not platform.startswith("linux") or jemalloc is None:
        if choice == "jemalloc":
            raise ConfigError(f"environment variable {ALLOCATOR_ENV}=jemalloc: jemalloc is not installed on this "
                              "machine (Debian/Ubuntu: apt-get install libjemalloc2; Linux only)")
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [jemalloc, environ.get("LD_PRELOAD", "")]))
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def reexec_with_jemalloc() -> None:
    """Replace this process by the same command line with jemalloc preloaded, when `allocator_reexec_env` says so.

    Only for a process started as a program (`remix-rft train`, `python -m remix_rft.cli train`): it must run before
    anything else and it never returns when it re-executes. Library callers keep their process's allocator.
    """
    env = allocator_reexec_env(dict(os.environ), sys.platform, find_jemalloc())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _cgroup_headroom(cgroup: str) -> float | None:
    """Bytes left under this container's memory limit (cgroup v2 memory.max - memory.current), None without one."""
    try:
        limit = open(os.path.join(cgroup, "memory.max")).read().strip()
        current = float(open(os.path.join(cgroup, "memory.current")).read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(float(limit) - current, 0.0)


def memory_at_hand(device_type: str, device_index: int | None = None, meminfo: str = "/proc/meminfo",
                   environ: MutableMapping[str, str] = os.environ, cgroup: str = "/sys/fs/cgroup") -> float:
    """Bytes this process can count on for its peak: a GPU's free memory; on CPU the RAM available now (MemAvailable:
    free plus reclaimable cache, or less where a container's memory limit leaves less) shared by this host's ranks
    (LOCAL_WORLD_SIZE under torchrun)."""
    if device_type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device_index)[0])
    available = None
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024  # kB
                    break
    except OSError:
        pass
    if available is None:  # no /proc (macOS): the machine's RAM
        try:
            available = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            available = float("inf")
    headroom = _cgroup_headroom(cgroup)
    if headroom is not None:
        available = min(available, headroom)
    return available / max(int(environ.get("LOCAL_WORLD_SIZE", "1")), 1)
