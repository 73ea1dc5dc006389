#!/usr/bin/env bash
# The whole benchmark run on the lent H200, in four device calls that each fit in the
# device tool's 10-minute limit (docs/benchmarks.md; docs/results/2026-12-02-notes.md; scripts/gpu_session.md
# stages the wheels first). Runs on the GPU machine, results under $OUT:
#   bash scripts/gpu_full_run.sh targets   # the operator's GPU tests + the targets' suite parts (real inputs)  ~380 s
#   bash scripts/gpu_full_run.sh added     # FlexAttention, batch 4, ChatGLM2, grids, 256K-512K   ~300 s
#   bash scripts/gpu_full_run.sh kernels   # full density, the compile and recompilation GPU tests, cuDNN 1M ~200 s
#   bash scripts/gpu_full_run.sh other     # synthetic/native 128K, rescored, the plan by parts   ~130 s
set -uo pipefail
call="$1"
run() { bash "$(dirname "$0")/gpu_run.sh" "$@"; }
show() {  # name, log: exit status and the log's last lines
    echo "== $1 rc=$2"; tail -"${3:-25}" "$4" | cut -c1-260
}
case "$call" in
targets)
    run python3 -m pytest -m gpu tests/gpu/test_gpu_operator.py --gpu-out "$OUT/check" --gpu-lengths 32768 --gpu-timing-lengths "" > "$OUT/check.log" 2>&1
    show gpu_operator_tests $? 3 "$OUT/check.log"
    run python3 -m sampleattn.bench.suite --out "$OUT/suite" --budget-s 390 --parts main128k,alpha099,1m,breakeven > "$OUT/suite.log" 2>&1
    show suite $? 45 "$OUT/suite.log" ;;
added)
    run python3 -m sampleattn.bench.suite --out "$OUT/suite2" --budget-s 470 --parts flex128k,batch4,chatglm2,grid128k,alphas128k,mid512k > "$OUT/suite2.log" 2>&1
    show suite2 $? 40 "$OUT/suite2.log" ;;
kernels)
    run python3 -m sampleattn.bench --geometries llama3 --lengths 32k,128k --alphas 0.95 --full-density --no-flex --out "$OUT/bench" > "$OUT/bench.log" 2>&1
    show sattn-bench $? 12 "$OUT/bench.log"
    run python3 -m pytest -m gpu tests/gpu/test_gpu_recompile.py tests/gpu/test_gpu_compile.py --gpu-out "$OUT/compile" --gpu-long > "$OUT/compile.log" 2>&1
    show gpu_compile_tests $? 8 "$OUT/compile.log"
    run python3 -c "import torch,json; from sampleattn.bench import harness as h; n=1<<20; q=torch.randn(1,n,32,128,device='cuda',dtype=torch.bfloat16); k=torch.randn(1,n,8,128,device='cuda',dtype=torch.bfloat16); v=torch.randn_like(k); t=h.dense_baselines(q,k,v,repeat=1,warmup=0,flex=False,backends=('cudnn',)); print('cudnn 1m', t); json.dump(t, open('$OUT/cudnn1m.json','w'))" > "$OUT/cudnn1m.log" 2>&1
    show cudnn1m $? 3 "$OUT/cudnn1m.log" ;;
other)
    run python3 -m sampleattn.bench.suite --out "$OUT/suite3" --budget-s 170 --parts synth128k,native128k,rescored > "$OUT/suite3.log" 2>&1
    show suite3 $? 25 "$OUT/suite3.log"
    run python3 -m sampleattn.bench.plan_sweep --out "$OUT/sweep" --lengths 131072 --parts plan > "$OUT/sweep.log" 2>&1
    show plan_sweep $? 6 "$OUT/sweep.log" ;;
*) echo "unknown call '$call': targets, added, kernels or other" >&2; exit 2 ;;
esac
