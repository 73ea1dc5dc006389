#!/usr/bin/env bash
# The block rule's measurements on the GPU machine, one part per device call (each under the
# 600 s limit), after staging the wheels (scripts/gpu_session.md). Results go under $OUT/<part>.
#   bash scripts/gpu_block_rule.sh rules128k     # rules and peers, 128K, both bands (~380 s)
#   bash scripts/gpu_block_rule.sh shares128k    # summed against squared shares, 128K, both bands (~250 s)
#   bash scripts/gpu_block_rule.sh heavy128k     # a few heavy stripe columns with the blocks, 128K (~250 s)
#   bash scripts/gpu_block_rule.sh ab BASE.tar   # two rules before and after a kernel change (~120 s)
#   bash scripts/gpu_block_rule.sh unstructured  # random inputs: never slower than dense (~80 s)
#   bash scripts/gpu_block_rule.sh rules1m       # 1M tokens, middle band (~330 s)
#   bash scripts/gpu_block_rule.sh p2-1m         # 1M tokens, squared shares at b0.99 and b0.993 (~200 s)
#   bash scripts/gpu_block_rule.sh tests         # pytest -m gpu: the block rule and the operator (~180 s)
#   bash scripts/gpu_block_rule.sh checks        # pytest -m gpu: torch.compile, CUDA graphs, recompiles, NCCL (~150 s)
#   bash scripts/gpu_block_rule.sh eval          # SmolLM2 fidelity 8K-32K and needle 4K-8K (~450 s)
# ``ab`` takes a `git archive` of the baseline commit (made on the CPU, carried in an ignored
# folder), installs it into /tmp/pkgbase and runs the same rows from it, for a comparison in
# the same session on the same card.
set -uo pipefail
part="$1"; shift
here="$(cd "$(dirname "$0")" && pwd)"
run() { bash "$here/gpu_run.sh" "$@"; }
out="${OUT:?set OUT}/$part"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv > "$out/gpu.txt" 2>&1
bench=(python3 -m sampleattn.bench.rules_bench --no-progress)
case "$part" in
    rules128k)
        methods="sampled a0.95 w8%,b0.95 nostripes w4%,b0.97 w2% rows/2,b0.98 w2% rows/2,b0.99 nostripes w2%"
        methods+=",b0.99 w2% rows/2,b0.993 w2% rows/2,w2% p2"
        run timeout 380 "${bench[@]}" --length 128k --peers --methods "$methods" --out "$out" > "$out/log" 2>&1 ;;
    shares128k)
        methods="b0.98 w2% rows/2,b0.99 w2% rows/2,b0.993 w2% rows/2,b0.99 w2% p2"
        run timeout 300 "${bench[@]}" --length 128k --methods "$methods" --out "$out" > "$out/log" 2>&1 ;;
    heavy128k)
        methods="=block b0.99 w2% rows/2,=block b0.993 w2% rows/2,stripes s0.5%"
        run timeout 330 "${bench[@]}" --length 128k --methods "$methods" --out "$out" > "$out/log" 2>&1 ;;
    ab)
        base_tar="$1"
        mkdir -p /tmp/base && tar -xf "$base_tar" -C /tmp/base
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
            --target /tmp/pkgbase /tmp/base > "$out/install.log" 2>&1
        methods="b0.99 nostripes w2%,b0.98 w2% rows/2"
        run bash -c "PYTHONPATH=/tmp/pkgbase:/tmp/site timeout 150 ${bench[*]} --length 128k --bands late --repeat 3 \
            --methods '$methods' --out '$out/base' > '$out/base.log' 2>&1; \
            timeout 150 ${bench[*]} --length 128k --bands late --repeat 3 --methods '$methods' --out '$out/new' \
            > '$out/new.log' 2>&1" ;;
    unstructured)
        run timeout 150 "${bench[@]}" --length 128k --bands random,synthetic --repeat 3 \
            --methods "sampled a0.95 w8%,b0.99 nostripes w2%,dense>0.7" --out "$out" > "$out/log" 2>&1 ;;
    rules1m)
        run timeout 330 "${bench[@]}" --length 1m --bands mid --repeat 1 \
            --methods "=1m sampled a0.95 w1% s1%,=1m block b0.95 w1% rows/4,=1m block b0.97 w1% rows/4,=1m block b0.99 w1% rows/4,=1m block b0.97 w1% rows/4 p2,=1m block b0.98 w1% rows/4 p2,=1m block b0.99 w1% rows/4 p2" \
            --out "$out" > "$out/log" 2>&1 ;;
    p2-1m)
        run timeout 330 "${bench[@]}" --length 1m --bands mid --repeat 1 \
            --methods "=1m block b0.99 w1% rows/4 p2,=1m block b0.993 w1% rows/4 p2,+64 stripes s0.1%" \
            --out "$out" > "$out/log" 2>&1 ;;
    tests)
        run timeout 180 python3 -m pytest -m gpu -q tests/gpu/test_gpu_block_rule.py tests/gpu/test_gpu_operator.py \
            -k "not timings and not rescored" --gpu-out "$out" > "$out/log" 2>&1
        run timeout 60 python3 -m pytest -q tests/test_block_rule.py -k dense_fallback > "$out/dense_heads.log" 2>&1 ;;
    checks)
        run timeout 280 python3 -m pytest -m gpu -q tests/gpu/test_gpu_compile.py tests/gpu/test_gpu_recompile.py \
            tests/distributed/test_context_parallel_gpu.py --gpu-out "$out" > "$out/log" 2>&1 ;;
    eval)
        run python3 -m sampleattn.eval run --form full --device cuda --budget-s "${BUDGET_S:-420}" --tasks fidelity,needle \
            --lengths 8k,16k,32k --samples 2 --alphas 0.95 --baselines '' --oracle-alphas '' --rescored-alphas '' \
            --block-betas 0.875,0.9,0.92 --block-share-power 2 --block-size 32 --block-stripes-alpha 0.99 --block-max-stripes 256 --needle-lengths 4k,8k --depths 0,0.25,0.5,0.75,1 \
            --needle-methods full,sample_attention,block_rule --no-progress --out "$out" > "$out/log" 2>&1 ;;
    *)
        echo "unknown part $part: rules128k, shares128k, heavy128k, ab BASE.tar, unstructured, rules1m, p2-1m, tests, checks or eval" >&2
        exit 2 ;;
esac
status=$?
tail -12 "$out/log" "$out"/*.log 2>/dev/null
exit $status
