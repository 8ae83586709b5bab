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
