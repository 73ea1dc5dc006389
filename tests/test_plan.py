"""Stages 1-2: the Triton plan against the plain-PyTorch plan, and the plan's properties."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig, plan, sample_attention
from sampleattn.reference import attention_ref, causal_mask, plan_ref

from kernel_helpers import DEVICE, qkv, rel_err


def cfg(**kw):
    kw.setdefault("dense_below", 0)
    kw.setdefault("block_m", 32)
    return SampleAttentionConfig(**kw)


def planted(seqlen, nheads_q, nheads_kv, head_dim, stripes, *, seed=0, strength=6.0):
    """Random inputs where key columns ``stripes`` align with every query: real stripe columns."""
    q, k, v = qkv(1, seqlen, seqlen, nheads_q, nheads_kv, head_dim, torch.float32, seed=seed)
    direction = torch.randn(head_dim, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    direction = direction / direction.norm()
    q = q + strength * direction
    k = k * 0.3
    k[:, stripes] += strength * direction
    return q, k, v


CASES = [
    # (seqlen_q, seqlen_k, Hq, Hkv, D, granularity, segment_rows)
    (97, 97, 4, 2, 64, "query_head", None),
    (97, 97, 4, 2, 64, "kv_head", None),
    (64, 200, 3, 1, 128, "kv_head", None),
    (150, 150, 2, 2, 64, "query_head", 64),
    (130, 260, 6, 2, 64, "kv_head", 64),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}/{c[3]}-{c[5]}-seg{c[6]}")
def test_kernel_plan_matches_reference_plan(case):
    seqlen_q, seqlen_k, hq, hkv, d, granularity, segment_rows = case
    q, k, _ = qkv(2, seqlen_q, seqlen_k, hq, hkv, d, torch.float32, seed=seqlen_q)
    config = cfg(alpha=0.9, window_ratio=0.1, sample_ratio=0.2, gqa_granularity=granularity,
                 segment_rows=segment_rows)
    fast = plan(q, k, config, keep_scores=True)
    slow = plan_ref(q, k, config, keep_scores=True)
    assert torch.equal(fast.sampled_rows.cpu(), slow.sampled_rows.cpu())
    assert torch.allclose(fast.scores, slow.scores, atol=1e-5, rtol=1e-4)
    # Near-ties at the threshold may flip one column; everything else must agree.
    assert (fast.col_count - slow.col_count).abs().max() <= 1
    assert torch.allclose(fast.retained_mean, slow.retained_mean, atol=1e-4)
    assert torch.allclose(fast.retained_min, slow.retained_min, atol=1e-3)
    assert torch.allclose(fast.density, slow.density, atol=0.01)


@pytest.mark.parametrize("granularity", ["query_head", "kv_head"])
def test_retained_mass_on_sampled_rows_reaches_alpha(granularity):
    q, k, _ = qkv(1, 256, 256, 4, 2, 64, torch.float32, seed=1)
    for alpha in (0.5, 0.8, 0.95):
        p = plan(q, k, cfg(alpha=alpha, window_ratio=0.05, sample_ratio=0.1, gqa_granularity=granularity))
        if granularity == "query_head":
            assert torch.all(p.retained_mean >= alpha - 1e-5), (alpha, p.retained_mean)
        else:  # the rule holds on the group's pooled rows
            pooled = p.retained_mean.view(1, 2, 2).mean(-1)
            assert torch.all(pooled >= alpha - 1e-5)
        assert torch.all(p.retained_min <= p.retained_mean + 1e-6)


def test_density_falls_as_alpha_falls():
    q, k, _ = qkv(1, 256, 256, 2, 1, 64, torch.float32, seed=2)
    densities = [plan(q, k, cfg(alpha=a, window_ratio=0.05, sample_ratio=0.1)).mean_density
                 for a in (0.999, 0.95, 0.9, 0.8, 0.5)]
    assert all(a >= b for a, b in zip(densities, densities[1:])), densities
    assert densities[0] > densities[-1]


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(97, 97), (60, 190)])
def test_selected_columns_are_causal(seqlen_q, seqlen_k):
    """The selector never picks a key that no row of the segment can see outside its window."""
    q, k, _ = qkv(1, seqlen_q, seqlen_k, 4, 2, 64, torch.float32, seed=3)
    config = cfg(alpha=0.99, window_ratio=0.1, sample_ratio=0.3, segment_rows=32)
    p = plan(q, k, config)
    w = p.window.cpu().to(torch.int64)
    for seg in range(p.n_segments):
        last_row = min((seg + 1) * p.segment_rows, seqlen_q) - 1
        last_pos = seqlen_k - seqlen_q + last_row
        for h in range(p.nheads_q):
            cols = p.selected_columns(0, h, seg).cpu()
            assert torch.all(cols <= last_pos - w[h]), (seg, h, cols)
    assert not torch.any(p.to_dense() & ~causal_mask(seqlen_q, seqlen_k, p.col_idx.device))


@pytest.mark.parametrize("updates", [{"alpha": 1.0}, {"window_ratio": 1.0}], ids=["alpha1", "window1"])
def test_alpha_one_or_full_window_is_exact(updates):
    q, k, v = qkv(1, 97, 150, 4, 2, 64, torch.float32, seed=4)
    config = cfg(alpha=0.9, window_ratio=0.05, sample_ratio=0.05).model_copy(update=updates)
    # the plan keeps every key...
    assert plan(q, k, config).mean_density == pytest.approx(1.0)
    # ...so the operator runs dense attention: no plan, exact output
    out, p = sample_attention(q, k, v, config, return_plan=True)
    assert p is None
    assert rel_err(out, attention_ref(q, k, v)) < 1e-5


def test_planted_stripes_are_found():
    stripes = [0, 1, 37, 90, 151]
    q, k, _ = planted(256, 2, 1, 64, stripes, seed=5, strength=8.0)
    p = plan(q, k, cfg(alpha=0.9, window_ratio=0.04, sample_ratio=0.05))
    for h in range(2):
        cols = set(p.selected_columns(0, h).tolist())
        assert set(stripes) <= cols, (h, sorted(cols)[:20])
    assert p.mean_density < 0.3


def test_plan_repr_and_dense_mask_are_consistent():
    q, k, _ = qkv(1, 100, 100, 2, 2, 64, torch.float32, seed=6)
    p = plan(q, k, cfg(alpha=0.8, window_ratio=0.1, sample_ratio=0.2))
    text = repr(p)
    assert text.startswith("SparsePlan(") and "density=" in text and "retained_min=" in text
    mask = p.to_dense()
    visible = causal_mask(100, 100, mask.device).sum()
    assert torch.allclose(p.density.cpu(), (mask.sum((-1, -2)).float() / visible).cpu(), atol=1e-6)


def test_row_subset_oracle_matches_full_oracle():
    """attention_rows_ref (used for long inputs) equals attention_ref on the same rows."""
    from sampleattn.reference import attention_rows_ref, sparse_attention_ref

    q, k, v = qkv(2, 90, 150, 6, 2, 64, torch.float32, seed=8)
    p = plan(q, k, cfg(alpha=0.8, window_ratio=0.1, sample_ratio=0.2, segment_rows=32))
    rows = torch.tensor([0, 5, 31, 32, 63, 89])
    assert rel_err(attention_rows_ref(q, k, v, rows, plan=p), sparse_attention_ref(q, k, v, p)[:, rows.to(DEVICE)]) < 1e-6
    assert rel_err(attention_rows_ref(q, k, v, rows), attention_ref(q, k, v)[:, rows.to(DEVICE)]) < 1e-6


def test_large_kernel_blocks_of_sampled_rows_match_reference():
    """With 256+ sampled rows the kernels take 64 rows per program (several sampled runs, one
    segment each); the result must not change."""
    q, k, _ = qkv(1, 640, 640, 2, 1, 64, torch.float32, seed=12)
    config = cfg(alpha=0.9, window_ratio=0.05, sample_ratio=0.45, segment_rows=320)
    fast = plan(q, k, config, keep_scores=True)
    slow = plan_ref(q, k, config, keep_scores=True)
    from sampleattn.sampling import choose_sampled_rows

    rows = choose_sampled_rows(640, 640, n_rows=config.sampled_rows(640), min_window=32,
                               block=config.sample_block, segment_rows=320, device="cpu")
    assert rows.block == 64 and rows.seg_blocks.tolist()[-1] == rows.block_seg.numel()
    assert torch.allclose(fast.scores, slow.scores, atol=1e-5, rtol=1e-4)
    assert (fast.col_count - slow.col_count).abs().max() <= 1
    assert torch.allclose(fast.retained_min, slow.retained_min, atol=1e-3)
