#!/usr/bin/env bash
# Runs on the lent GPU machine (its python3 has torch and triton): installs the carried wheels
# (.whl/: pydantic, pytest and their dependencies) and this package into /tmp, copies tests/,
# docs/ and pyproject.toml (pytest's settings and markers) to /tmp/work, and runs the given
# command there (outside the checkout, whose sampleattn/ folder would shadow the installed
# package, which alone has sampleattn.kernels). Usage:
#   bash scripts/gpu_run.sh python3 -m pytest -m gpu tests/gpu --gpu-out "$OUT/check"
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target /tmp/pkg . >/dev/null
export PYTHONPATH=/tmp/pkg:/tmp/site
export PYTHONUNBUFFERED=1
mkdir -p /tmp/work && rm -rf /tmp/work/tests /tmp/work/docs && cp -r tests docs pyproject.toml /tmp/work/
cd /tmp/work
"$@"
