"""Shared helpers of the operator tests: inputs, hand-made plans, error measures."""

from __future__ import annotations

import torch

from sampleattn.planning import SparsePlan
from sampleattn.reference import attention_ref
from sampleattn.reference import relative_error as rel_err
from sampleattn.selection import density_per_head

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qkv(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype, seed=0):
    """Random q (B, Sq, Hq, D), k and v (B, Sk, Hkv, D), never zeros."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seqlen_q, nheads_q, head_dim, generator=g)
    k = torch.randn(batch, seqlen_k, nheads_kv, head_dim, generator=g)
    v = torch.randn(batch, seqlen_k, nheads_kv, head_dim, generator=g)
    return (t.to(DEVICE, dtype) for t in (q, k, v))


def hand_plan(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, *, windows, columns, q_per_sel=1,
              segment_rows=None, block_m=64, scale):
    """A SparsePlan from explicit windows (Hq ints) and column lists.

    columns[b][sel_head][segment] is a list of key indices (any order, duplicates removed).
    """
    n_sel = nheads_q // q_per_sel
    segment_rows = segment_rows or -(-seqlen_q // block_m) * block_m
    n_seg = -(-seqlen_q // segment_rows)
    kmax = max(1, max(len(set(c)) for per_b in columns for per_h in per_b for c in per_h))
    col_idx = torch.full((batch, n_sel, n_seg, kmax), seqlen_k, dtype=torch.int32)
    col_count = torch.zeros((batch, n_sel, n_seg), dtype=torch.int32)
    for b in range(batch):
        for h in range(n_sel):
            for s in range(n_seg):
                cols = sorted(set(columns[b][h][s]))
                col_idx[b, h, s, : len(cols)] = torch.tensor(cols, dtype=torch.int32)
                col_count[b, h, s] = len(cols)
    window = torch.tensor(windows, dtype=torch.int32)
    col_idx, col_count, window = col_idx.to(DEVICE), col_count.to(DEVICE), window.to(DEVICE)
    density = density_per_head(col_idx, col_count, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                               segment_rows=segment_rows, q_per_sel=q_per_sel)
    ones = torch.ones(batch, nheads_q, device=DEVICE)
    return SparsePlan(
        batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q, nheads_kv=nheads_kv,
        gqa_granularity="kv_head" if q_per_sel > 1 else "query_head", segment_rows=segment_rows,
        scale=scale, window=window, col_idx=col_idx, col_count=col_count, retained_mean=ones,
        retained_min=ones, density=density, sampled_rows=torch.zeros(0, dtype=torch.int64),
    )


def assert_close_to_golden(out, q, k, v, mask, scale, *, factor=2.0, floor=1e-5):
    """out's error against an fp32 golden is at most ``factor`` x that of PyTorch at q's dtype."""
    golden = attention_ref(q.float(), k.float(), v.float(), scale=scale, mask=mask)
    same_dtype = attention_ref(q, k, v, scale=scale, mask=mask, upcast=False)
    err = rel_err(out, golden)
    base = rel_err(same_dtype, golden)
    assert err <= factor * base + floor, f"kernel error {err:.3e} > {factor} x PyTorch {base:.3e} + {floor}"
    return err, base
