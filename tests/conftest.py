"""Shared fixtures. Keep them cheap: 2 CPU cores are shared by everyone running tests.

Real-model smoke tests carry `@pytest.mark.slow`; skip them locally with `-m "not slow"`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from remix_rft.models import build_tiny_model, load_tokenizer  # noqa: E402

# One intra-op thread: the tiny test models run many microsecond-sized ops, which a second thread only slows
# down (hundreds of times over when other processes keep the cores busy).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so the marker is known when pytest runs with another config file.
    config.addinivalue_line("markers", "slow: runs on the real embedded SmolLM2 model (smoke tests)")
    config.addinivalue_line("markers", "vllm: needs vLLM (the .venv-vllm venv of scripts/setup_vllm.sh)")


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer (also the tiny model's). Converts the embedded model once per machine if needed."""
    return load_tokenizer("tiny-random")


@pytest.fixture
def tiny_model():
    """A fresh 2-layer random Llama with the SmolLM2 vocabulary (seed 0, float32, eval mode)."""
    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared evaluation data (`$REMIX_DATA_DIR`, else ../shared/data next to the repo); skips if absent."""
    path = Path(os.environ.get("REMIX_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set REMIX_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """`load_benchmark("speed")`: benchmarks/speed.py loaded by path as the module `speed_benchmark` (once a session),
    for the tests that keep a benchmark script from rotting. benchmarks/ goes on sys.path first, as it is when a
    script runs (its folder is sys.path[0]), so the script's imports of its siblings resolve the same way."""
    folder = str(REPO_ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)

    def load(name: str):
        module_name = f"{name}_benchmark"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "benchmarks" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load
