#!/usr/bin/env bash
# Install Glimpse and everything its tests need into ./.venv (Python >= 3.11).
#
# torch: on x86_64 the pinned torch/torchvision pair below imports together on a
# CPU-only machine and on a CUDA one; set GLIMPSE_TORCH="torch==X torchvision==Y"
# (and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu
# for a smaller CPU-only build) to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Glimpse needs Python 3.11 or newer")'

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

if [ -z "${GLIMPSE_TORCH:-}" ]; then
  case "$(uname -m)" in
    aarch64|arm64) GLIMPSE_TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *)             GLIMPSE_TORCH="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $GLIMPSE_TORCH
# Pinned to the versions the suite was last run with (transformers' model internals move fast).
.venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[model,test]"
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
.venv/bin/python -c 'import torch, torchvision, transformers; print(f"glimpse installed: torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, cuda={torch.cuda.is_available()}")'
