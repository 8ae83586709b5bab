"""Host memory hygiene: freed CPU memory handed back to the OS before an update."""

from __future__ import annotations

import sys

import pytest
import torch

from remix_rft.memory import release_freed_memory
from remix_rft.metrics import rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux's")
def test_release_freed_memory_returns_freed_heap_pages():
    # many tensors below glibc's mmap threshold land in the heap; freeing them leaves the pages resident
    keep, drop = [], []
    for i in range(4000):
        (keep if i % 50 == 0 else drop).append(torch.ones(16_000))  # 64 KB each: ~250 MB freed, pinned by `keep`
    del drop
    before = rss_mb()
    assert release_freed_memory() is True
    assert rss_mb() < before - 100
    assert sum(float(t[0]) for t in keep) == len(keep)  # what is still live is untouched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_peak_rss_of_a_child_process_is_its_own_not_its_parents():
    """ru_maxrss survives execve, so a process spawned by a large parent (subprocess: vfork + exec) would log the
    parent's peak as its own; memory/peak_rss_mb reads the child's own high-water mark (VmHWM)."""
    import subprocess

    from remix_rft.metrics import peak_rss_mb

    ballast = bytearray(1024 * 2**20)  # 1 GiB, touched: resident in this (parent) process
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    parent = rss_mb()
    assert parent > 1024
    code = "from remix_rft.metrics import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
    assert child < parent - 512 and peak_rss_mb() >= parent
    del ballast


KERNEL_CACHE_PROBE = """
import random, sys
import torch
from remix_rft.memory import bound_kernel_caches
from remix_rft.metrics import rss_mb
if sys.argv[1] == "bounded":
    bound_kernel_caches()
torch.set_num_threads(1)
w = torch.randn(256, 512, requires_grad=True)
for i in range(100):  # warm the allocator's pools first
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (torch.randn(1000 + i, 256) @ w).float().sum().backward()
start = rss_mb()
random.seed(0)
for n in random.sample(range(1, 1000), 600):  # 600 batch shapes, as a run meets over its steps
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (torch.randn(n, 256) @ w).float().sum().backward()
print(rss_mb() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_bf16_matmuls_of_ever_new_shapes_do_not_grow_memory_without_bound():
    """bf16 autocast on a CPU with native bf16 runs oneDNN, which caches a compiled kernel per matmul shape (1,024
    per cache by default): +570 MiB over 600 shapes measured on an AVX512-BF16 CPU, +96 MiB with the bound that
    the CLI and the Trainer set. Where bf16 is emulated (AVX2) there is no such cache and both stay small."""
    import os
    import subprocess

    from remix_rft.memory import KERNEL_CACHE_ENV

    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_ENV}
    growth = {mode: float(subprocess.run([sys.executable, "-c", KERNEL_CACHE_PROBE, mode], env=env, check=True,
                                         capture_output=True, text=True).stdout.split()[-1])
              for mode in ("default", "bounded")}
    assert growth["bounded"] < 200, growth
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        assert growth["default"] > 2 * growth["bounded"], growth  # the caches this bound exists for


def test_bound_kernel_caches_keeps_a_value_the_user_set():
    from remix_rft.memory import KERNEL_CACHE_CAPACITY, bound_kernel_caches

    environ = {"LRU_CACHE_CAPACITY": "4096"}
    bound_kernel_caches(environ)
    assert environ == {"LRU_CACHE_CAPACITY": "4096", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(KERNEL_CACHE_CAPACITY)}


HEAP_PROBE = """
import torch
from remix_rft.memory import _jemalloc_mallctl, heap_allocated_mb, return_free_pages
from remix_rft.metrics import rss_mb
print("jemalloc" if _jemalloc_mallctl() is not None else "system")
start_heap = heap_allocated_mb()
start_gap = rss_mb() - start_heap  # resident but not allocated: code, stacks, the allocator's own pages
keep, drop = [], []
for i in range(8000):  # 64 KB each, carved from the allocator's heap (not a mapping each): freed ones stay cached
    (keep if i % 50 == 0 else drop).append(torch.ones(16_000))
held_heap = heap_allocated_mb()
del drop
freed_heap = heap_allocated_mb()
freed_gap = rss_mb() - freed_heap
return_free_pages()
print(held_heap - start_heap, freed_heap - start_heap, freed_gap - start_gap,
      rss_mb() - heap_allocated_mb() - start_gap, sum(float(t[0]) for t in keep))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2, LD_PRELOAD and /proc are Linux's")
@pytest.mark.parametrize("allocator", ["system", "jemalloc"])
def test_heap_counts_live_bytes_and_free_pages_go_back_at_a_steps_end(allocator):
    """memory/heap_mb counts what is allocated, not what the allocator keeps; return_free_pages() (called at each
    step's end) hands the kept pages back: jemalloc would otherwise keep them until its decay timer (here set to
    100 s so that only the call can have done it), glibc until a trim."""
    import os
    import subprocess

    from remix_rft.memory import find_jemalloc

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if allocator == "jemalloc":
        library = find_jemalloc()
        if library is None:
            pytest.skip("jemalloc is not installed (CI installs Debian's libjemalloc2)")
        env.update(LD_PRELOAD=library, MALLOC_CONF="background_thread:false,dirty_decay_ms:100000,muzzy_decay_ms:0")
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    assert out[0] == allocator
    held, after_free, cached, after_call, kept = (float(v) for v in out[1:])
    assert 470 < held < 530  # 8,000 x 62.5 KiB
    assert 5 < after_free < 20  # the 160 kept
    assert cached > 300  # freed but still resident: the allocator kept it
    assert after_call < 40  # handed back: resident again ~ what is allocated
    assert kept == 160
