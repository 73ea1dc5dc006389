"""The block rule on a CUDA GPU in bf16/fp16: its estimate and selection kernels against their
plain-PyTorch references, the whole operator against the fp32 oracle of its own plan in
Llama-3-8B geometry, and a target of 1 against dense attention. A few cases only: each new
shape compiles the kernels again."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig, plan, sample_attention
from sampleattn.kernels import block_scores, select_key_blocks
from sampleattn.reference import attention_ref, attention_rows_ref, relative_error
from sampleattn.rules import BlockRule
from sampleattn.rules.block import block_scores_ref, select_key_blocks_ref

from test_gpu_operator import _rows, structured_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU: run `pytest -m gpu tests/gpu` there")]


def block_config(beta: float, *, row_stride: int = 1, window: float = 0.02,
                 max_stripes: int | None = None) -> SampleAttentionConfig:
    stripes = max_stripes is not None
    return SampleAttentionConfig(alpha=0.99 if stripes else 0.9, window_ratio=window,
                                 sample_ratio=0.01 if stripes else 0.05, dense_below=0, gqa_granularity="kv_head",
                                 selection=BlockRule(beta=beta, row_stride=row_stride, stripes=stripes,
                                                     max_stripes=max_stripes))


@pytest.mark.parametrize("row_stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_block_scores_match_the_reference(dtype, row_stride, gpu_results):
    """4,000 rows (no multiple of the block), 32/8 heads, d128: the fp32 reference on the same
    half-precision inputs."""
    q, k, _ = structured_inputs(4000, 32, 8, 128, dtype, seed=3)
    kw = dict(key_block=128, block_rows=128, q_per_sel=4, scale=128 ** -0.5, row_stride=row_stride)
    got = block_scores(q, k, **kw)
    want = block_scores_ref(q.float(), k.float(), **kw)
    err = relative_error(got, want)
    gpu_results("gpu_check", {"check": f"block scores {str(dtype)[6:]} 4000 32/8 d128 rows/{row_stride}",
                              "score_rel_err": err})
    assert err < 2e-2


def test_selection_kernel_matches_the_sort():
    """Random scores of 1,024 key blocks per query block (a 128K sequence's width)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    n_kb = 1024
    scores = torch.rand(1, 8, 64, n_kb, device="cuda", generator=gen) ** 6
    cand = torch.randint(1, n_kb + 1, (8, 64), device="cuda", generator=gen)
    kw = dict(sink_blocks=1, width=n_kb)
    got_idx, got_count = select_key_blocks(scores, cand, 0.98, **kw)
    want_idx, want_count = select_key_blocks_ref(scores, cand, 0.98, **kw)
    assert torch.equal(got_count, want_count)
    assert torch.equal(got_idx, want_idx)


@pytest.mark.parametrize("beta,row_stride,max_stripes", [(0.95, 1, None), (0.99, 2, None), (0.95, 2, 64)])
def test_block_operator_matches_the_oracle_of_its_plan(operator_length, beta, row_stride, max_stripes, gpu_results):
    """Llama-3-8B geometry (32/8, d128), bf16, 256 random rows; with ``max_stripes`` a few heavy
    stripe columns too (stage 3 tests for columns only in the blocks that hold one)."""
    n = operator_length
    q, k, v = structured_inputs(n, 32, 8, 128, torch.bfloat16, seed=n)
    config = block_config(beta, row_stride=row_stride, max_stripes=max_stripes)
    out, p = sample_attention(q, k, v, config, return_plan=True)
    rows = _rows(n)
    err = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
    label = f"b{beta} rows/{row_stride}" + (f" +{max_stripes} stripes" if max_stripes else "")
    gpu_results("gpu_check", {"check": f"operator block {label} bf16 {n} 32/8 d128",
                              "error_vs_same_plan": err,
                              "error_vs_full": relative_error(out[:, rows], attention_rows_ref(q, k, v, rows)),
                              "density": p.mean_density, "key_blocks_mean": float(p.blocks.blk_count.float().mean())})
    assert not torch.isnan(out).any()
    if max_stripes:
        assert 0 < int(p.col_count.max()) <= max_stripes
    # at the shortest lengths a high beta may keep every block of these inputs: still the plan's
    assert 0 < p.mean_density <= 1
    assert err < 1e-2


def test_target_one_is_dense_attention():
    q, k, v = structured_inputs(3000, 8, 2, 128, torch.bfloat16, seed=5)
    out = sample_attention(q, k, v, block_config(1.0))
    want = attention_ref(q.float(), k.float(), v.float(), scale=128 ** -0.5)
    same = attention_ref(q, k, v, scale=128 ** -0.5, upcast=False)
    assert relative_error(out, want) <= 2 * relative_error(same, want) + 1e-5
