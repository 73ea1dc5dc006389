"""No recompilation for each new length: the compile-cache keys the kernels would use on an
H200 (sm_90), counted on the CPU with Triton's own binder (bench/triton_keys.py).

The lengths are runtime arguments of every kernel and are not specialised on
(kernels/_specialization.py), and `col_idx` is padded to a multiple of 16 columns, so one
configuration compiles each kernel once whatever the length: over many lengths (every residue
class mod 16, of the lengths and of the counts derived from them) each kernel has one key, and
stage 3 two at most (its compact-columns path is a separate variant, chosen by memory). The block
rule's estimate and selection kernels likewise compile once."""

from __future__ import annotations

import os

import pytest
import torch

from sampleattn import SampleAttentionConfig, plan, sample_attention
from sampleattn.synthetic import structured_qkv

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="counts the cache keys of interpreted launches (the CPU run)")

LENGTHS = (256, 264, 300, 392, 520, 610)


def _config(**update):
    return SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0, **update)


@pytest.mark.parametrize("mode", ["kv_head", "query_head", "reports", "rescored", "block"])
def test_new_lengths_do_not_recompile(mode):
    from sampleattn.bench.triton_keys import CacheKeyRecorder
    from sampleattn.rules import BlockRule

    selection = {"rescored": "rescored", "block": BlockRule(beta=0.9, key_block=64, row_stride=2)}.get(mode, "sampled")
    config = _config(gqa_granularity="query_head" if mode == "query_head" else "kv_head", selection=selection)
    with CacheKeyRecorder() as recorder:
        for n in LENGTHS:
            q, k, v = structured_qkv(1, n, n, 4, 2, 64, dtype=torch.float16, seed=n)
            if mode == "reports":
                plan(q, k, config)  # the retained-mass reports: the stripe-mass kernel too
            else:
                sample_attention(q, k, v, config)
    counts = recorder.count_by_kernel()
    expected = {"reports": {"sampled_row_stats_kernel", "column_scores_kernel", "stripe_mass_kernel"},
                "rescored": {"candidate_mass_kernel", "sparse_attention_fwd_kernel"},
                "block": {"block_scores_kernel", "block_select_kernel", "sparse_attention_fwd_kernel"}}.get(
                    mode, {"sampled_row_stats_kernel", "column_scores_kernel", "sparse_attention_fwd_kernel"})
    assert expected <= set(counts), counts
    differing = recorder.differing_arguments()
    # Stage 3's variants are choices of the configuration, never of the length: the compact
    # copy (by memory) and, for the rescored selection, its log-sum-exp-only ranking launch
    # (other tiles, no output: a 1-element placeholder with strides 1).
    stage3 = {"COMPACT"} | ({"LSE_ONLY", "RETURN_LSE", "BLOCK_M", "BLOCK_N", "stride_ob", "stride_om", "stride_oh"}
                            if mode == "rescored" else set())
    # At most: stage 3 gathered + compact, plus the ranking launch when rescored; one elsewhere.
    stage3_keys = 3 if mode == "rescored" else 2
    for kernel, n_keys in counts.items():
        stage3_kernel = kernel == "sparse_attention_fwd_kernel"
        assert n_keys <= (stage3_keys if stage3_kernel else 1), (kernel, differing.get(kernel))
        assert set(differing.get(kernel, {})) <= (stage3 if stage3_kernel else set()), (kernel, differing[kernel])


def test_col_idx_width_is_a_multiple_of_16():
    for n in (300, 517):
        q, k, _ = structured_qkv(1, n, n, 4, 2, 64, dtype=torch.float16, seed=n)
        p = plan(q, k, _config(), reports=False)
        assert p.col_idx.shape[-1] % 16 == 0
        assert p.col_idx.shape[-1] - int(p.col_count.max()) < 16
        assert bool((p.col_idx[..., int(p.col_count.max()):] == n).all())  # the padding is the sentinel


def test_a_new_head_dim_is_a_new_key():
    """The recorder sees real differences: another head dimension is another compiled kernel."""
    from sampleattn.bench.triton_keys import CacheKeyRecorder

    with CacheKeyRecorder() as recorder:
        q, k, v = structured_qkv(1, 512, 512, 4, 2, 64, dtype=torch.float16, seed=0)
        sample_attention(q, k, v, _config())
        before = set(recorder.keys)
        q, k, v = structured_qkv(1, 512, 512, 4, 2, 128, dtype=torch.float16, seed=0)
        sample_attention(q, k, v, _config())
    assert len(recorder.keys - before) >= 3


@pytest.mark.parametrize("head_dim,kernel", [(128, "sparse_attention_fwd_kernel"),
                                             (256, "sampled_row_stats_kernel")])
def test_fp32_launches_fit_in_h200_shared_memory(head_dim, kernel):
    """fp32 inputs take twice the shared memory of bf16: the tiles the launchers pick for them
    must still fit in one H200 block. They did not (stage 3 at head dim 128: 384 KiB; stage 1 at
    256: 256 KiB), so those launches would have failed on the GPU (found by compiling for sm_90,
    never run there). Compiled for sm_90 on the CPU (about a minute each: fp32's exact dot
    products make large kernels)."""
    from sampleattn.bench.triton_keys import H200_SHARED_BYTES, CacheKeyRecorder, compile_for_gpu

    pytest.importorskip("triton.backends.nvidia")
    with CacheKeyRecorder() as recorder:
        q, k, v = structured_qkv(1, 256, 256, 4, 2, head_dim, dtype=torch.float32, seed=0)
        sample_attention(q, k, v, _config())
    launches = [launch for key, launch in recorder.launches.items() if key[0] == kernel]
    assert launches, f"{kernel} was not launched"
    for launch in launches:
        shared = compile_for_gpu(launch)
        assert shared <= H200_SHARED_BYTES, f"{kernel} fp32 d{head_dim} needs {shared} B of shared memory"


def test_a_batch_of_one_past_2_31_elements_is_not_a_new_key():
    """From 512K tokens in Llama-3-8B's geometry q holds 2**31 elements, and Triton types an
    integer argument of 2**31 or more as i64: a batch stride that large would compile every
    kernel again. A batch of one passes 0 instead (kernels/_specialization.batch_stride). The
    huge stride is made with `as_strided` (a size-1 dimension's stride is free), so no memory is
    needed; on the GPU, 512K real tokens did compile 4 new variants before this."""
    from sampleattn.bench.triton_keys import CacheKeyRecorder

    def huge_batch_stride(t):
        return t.as_strided(t.shape, (2**31 + 2**20, *t.stride()[1:]))

    with CacheKeyRecorder() as recorder:
        q, k, v = structured_qkv(1, 300, 300, 4, 2, 64, dtype=torch.float16, seed=0)
        expected = sample_attention(q, k, v, _config())
        before = set(recorder.keys)
        q, k, v = (huge_batch_stride(t) for t in (q, k, v))
        assert q.stride(0) >= 2**31
        out = sample_attention(q, k, v, _config())
        added = set(recorder.keys) - before
    assert not added, recorder.differing_arguments()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
