"""A new length does not recompile the Triton kernels: the operator at many lengths in one
process, counting the compiled variants of the `sampleattn.kernels` Triton functions held in
Triton's in-memory caches (`harness.compiled_kernel_count`; they exist on a GPU only).

The kernels take every length as a runtime argument (kernels/_specialization.py;
tests/test_no_recompile.py checks the specialisation keys on the CPU), so after a first pass no
new length may add a variant. With ``--gpu-long`` the second pass also runs 256K, 512K and 1M
tokens, where q holds 2**31 elements or more. Rows: ``recompile_check.json`` with ``--gpu-out``.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU: run `pytest -m gpu tests/gpu` there")]

FIRST_PASS = (8192, 8200, 12345, 16384, 20000, 32768, 40001)
SECOND_PASS = (9216, 9000, 13001, 24576, 30000, 49152, 50003)  # new lengths, the same divisibility classes
#: With --gpu-long: lengths at which q holds 2**31 elements or more (from 512K in this geometry),
#: where a batch stride passed as such would be typed i64 (kernels/_specialization.batch_stride).
LONG_PASS = (262144, 524288, 1048576)


def test_new_lengths_add_no_compiled_variant(request, gpu_results):
    from sampleattn import SampleAttentionConfig, sample_attention
    from sampleattn.bench.harness import GEOMETRIES, compiled_between, compiled_kernel_count, make_inputs

    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    second = SECOND_PASS + (LONG_PASS if request.config.getoption("--gpu-long") else ())
    rows = []
    for pass_no, lengths in ((1, FIRST_PASS), (2, second)):
        for seqlen in lengths:
            q, k, v = make_inputs(GEOMETRIES["llama3"], seqlen, 1, "synthetic")
            before = compiled_kernel_count()
            torch.cuda.synchronize()
            started = time.perf_counter()
            sample_attention(q, k, v, config)
            torch.cuda.synchronize()
            row = {"pass": pass_no, "seqlen": seqlen, "multiple_of_16": seqlen % 16 == 0,
                   "first_call_s": round(time.perf_counter() - started, 4), "compiled_before": before,
                   "compiled_after": compiled_kernel_count()}
            rows.append(row)
            gpu_results("recompile_check", row)
            del q, k, v
            torch.cuda.empty_cache()
    assert all(r["compiled_after"] is not None for r in rows), "Triton's caches were not found: cannot count"
    assert rows[0]["compiled_after"] > 0
    added = {r["seqlen"]: compiled_between(r["compiled_before"], r["compiled_after"]) for r in rows if r["pass"] == 2}
    assert not any(added.values()), f"new lengths compiled new variants: {added}"
