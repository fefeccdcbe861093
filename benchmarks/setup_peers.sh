#!/usr/bin/env bash
# Create .venv-bench with the peer libraries (PyHessian, hessian-eigenthings,
# matfree on torch CPU 2.13.0) and hessian_tools itself (editable), for
# `make bench`. Idempotent; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU-only torch first: the CPU wheel of torch 2.13.0 that this machine keeps
# on disk (pip's configured find-links). Never let pip pull a CUDA build.
"$VENV/bin/python" -m pip install --quiet --no-index torch==2.13.0 \
    || "$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is not None)" \
    || { echo "setup_peers.sh: a CUDA build of torch got installed; remove $VENV" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet -r benchmarks/requirements-peers.txt
"$VENV/bin/python" -m pip install --quiet -e .
"$VENV/bin/python" -c "import torch, pyhessian, hessian_eigenthings, matfree; \
print('peers ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
