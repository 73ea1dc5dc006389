"""Does a new length recompile the Triton kernels? The operator at many lengths, one process.

Run on a CUDA GPU: ``python -m sampleattn.bench.recompile_check --out DIR``. For each length
(multiples of 16 and odd ones, in Llama-3-8B's geometry, synthetic inputs, bf16) it calls the
whole operator once and records the first-call time and the number of compiled variants of the
`sampleattn.kernels` Triton functions held in Triton's in-memory caches
(`harness.compiled_kernel_count`). The kernels take every length as a runtime argument and do
not specialise on it (kernels/_specialization.py; `tests/test_no_recompile.py` counts the same
keys on the CPU), so after the first length no length should add a variant; the check fails if
the second pass, at new lengths, adds any. With ``--long`` the second pass also runs 256K, 512K
and 1M tokens, where q holds 2**31 elements or more. Writes ``DIR/recompile_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

FIRST_PASS = (8192, 8200, 12345, 16384, 20000, 32768, 40001)
SECOND_PASS = (9216, 9000, 13001, 24576, 30000, 49152, 50003)  # new lengths, same classes
#: ``--long``: lengths at which q holds 2**31 elements or more (from 512K in this geometry), where
#: a batch stride passed as such would be typed i64 (kernels/_specialization.batch_stride).
LONG_PASS = (262144, 524288, 1048576)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.recompile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--long", action="store_true",
                        help=f"also run {', '.join(map(str, LONG_PASS))} tokens in the second pass (8-20 GB each)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("recompile_check: needs a CUDA GPU (Triton's compiled caches do not exist under the interpreter)",
              file=sys.stderr)
        return 2
    from sampleattn import SampleAttentionConfig, collect_env, sample_attention
    from sampleattn.bench.harness import GEOMETRIES, compiled_between, compiled_kernel_count, make_inputs

    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    rows = []
    second = SECOND_PASS + (LONG_PASS if args.long else ())
    for pass_no, lengths in ((1, FIRST_PASS), (2, second)):
        for seqlen in lengths:
            q, k, v = make_inputs(GEOMETRIES["llama3"], seqlen, 1, "synthetic")
            before = compiled_kernel_count()
            torch.cuda.synchronize()
            started = time.perf_counter()
            sample_attention(q, k, v, config)
            torch.cuda.synchronize()
            first_s = time.perf_counter() - started
            after = compiled_kernel_count()
            row = {"pass": pass_no, "seqlen": seqlen, "multiple_of_16": seqlen % 16 == 0,
                   "first_call_s": round(first_s, 4), "compiled_before": before, "compiled_after": after}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    counts_known = all(r["compiled_after"] is not None for r in rows)
    added_second = (sum(compiled_between(r["compiled_before"], r["compiled_after"]) for r in rows if r["pass"] == 2)
                    if counts_known else None)
    ok = counts_known and added_second == 0
    result = {"env": collect_env(), "command": sys.argv, "rows": rows, "added_in_second_pass": added_second, "ok": ok}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recompile_check.json").write_text(json.dumps(result, indent=1))
    print(f"compiled variants: {rows[0]['compiled_after']} after the first length, {rows[-1]['compiled_after']} "
          f"at the end; added in the second pass (new lengths): {added_second}; ok={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
