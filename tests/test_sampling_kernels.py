"""Stage-1 kernels one by one against dense softmax rows: the sampled rows' log-sum-exp and
window mass, and the column scores, including the unmasked fast paths of both kernels and the
window mass that the fast plan derives from the scores."""

from __future__ import annotations

import math

import pytest
import torch

from sampleattn import SampleAttentionConfig, plan
from sampleattn.kernels import column_scores, sampled_row_stats
from sampleattn.kernels.sampling import score_tile_ranges
from sampleattn.planning import counted_pairs, summarize_rows, window_mass_from_scores
from sampleattn.reference import plan_ref
from sampleattn.sampling import choose_sampled_rows

from kernel_helpers import DEVICE, qkv

LOG2E = math.log2(math.e)


def dense_rows(q, k, rows, window, scale):
    """fp32 oracle: (lse2, wmass, p_out) of the sampled rows, shapes (B, Hq, n_slots) twice and
    (B, Hq, n_slots, Sk); padding slots (-1) get lse2 = +inf, wmass = 1, p_out = 0."""
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    group = q.shape[2] // k.shape[2]
    slot_rows = rows.to(torch.int64)
    real = slot_rows >= 0
    qs = q[:, slot_rows.clamp(min=0)].transpose(1, 2).float()
    kk = k.float().repeat_interleave(group, dim=2).transpose(1, 2)
    s = torch.matmul(qs, kk.transpose(-1, -2)) * scale * LOG2E  # log2 domain
    pos = (seqlen_k - seqlen_q + slot_rows).view(1, 1, -1, 1)
    j = torch.arange(seqlen_k, device=q.device).view(1, 1, 1, -1)
    visible = (j <= pos) & real.view(1, 1, -1, 1)
    s = s.masked_fill(~visible, float("-inf"))
    lse2 = torch.logsumexp(s * math.log(2), dim=-1) / math.log(2)
    lse2 = torch.where(real.view(1, 1, -1), lse2, torch.full_like(lse2, float("inf")))
    p = torch.exp2(s - lse2.unsqueeze(-1)).nan_to_num(0.0)
    outside = visible & (j <= pos - window.to(torch.int64).view(1, -1, 1, 1))
    wmass = torch.where(visible & ~outside, p, 0.0).sum(-1)
    wmass = torch.where(real.view(1, 1, -1), wmass, torch.ones_like(wmass))
    return lse2, wmass, torch.where(outside, p, 0.0)


def sampled(seqlen_q, seqlen_k, windows, *, n_rows, kernel_block, segment_rows=None):
    return choose_sampled_rows(seqlen_q, seqlen_k, n_rows=n_rows, min_window=min(windows), block=16,
                               segment_rows=segment_rows or seqlen_q, device=DEVICE, kernel_block=kernel_block)


CASES = [
    # (Sq, Sk, Hq, Hkv, D, windows (one per query head), n_rows, kernel block, dtype)
    (700, 700, 2, 1, 64, [40, 40], 200, 64, torch.float32),
    (650, 777, 4, 2, 96, [30, 50, 30, 70], 150, 16, torch.float32),  # Sq < Sk, D not a power of 2
    (509, 509, 4, 1, 128, [64, 64, 64, 64], 120, 64, torch.float16),
    (600, 600, 3, 3, 64, [20, 90, 45], 90, 16, torch.float16),
]


def case_id(c):
    return f"{c[0]}x{c[1]}-{c[2]}/{c[3]}-d{c[4]}-kb{c[7]}-{str(c[8])[6:]}"


@pytest.mark.parametrize("block_n", [32, 64, 128])
@pytest.mark.parametrize("grouped", [False, True], ids=["one-head", "kv-group"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sampled_row_stats_match_dense_rows(case, grouped, block_n):
    """Per program one head's block of rows, or the rows of every head of a KV group in one
    tile (then with half the slots per program, as the launcher allows any divisor)."""
    seqlen_q, seqlen_k, hq, hkv, d, windows, n_rows, kernel_block, dtype = case
    heads = hq // hkv if grouped else 1
    q, k, _ = qkv(2, seqlen_q, seqlen_k, hq, hkv, d, dtype, seed=seqlen_q + block_n)
    window = torch.tensor(windows, dtype=torch.int32, device=DEVICE)
    rows = sampled(seqlen_q, seqlen_k, windows, n_rows=n_rows, kernel_block=kernel_block)
    scale = d ** -0.5
    lse_ref, wmass_ref, _ = dense_rows(q, k, rows.rows, window, scale)
    real = (rows.rows >= 0).view(1, 1, -1)
    for window_mass in (True, False):
        block_s = max(16, rows.block // 2) if grouped else rows.block
        lse2, wmass = sampled_row_stats(q, k, rows.rows, window, scale=scale, block_s=block_s,
                                        block_n=block_n, window_mass=window_mass, heads_per_program=heads)
        assert torch.isinf(lse2[~real.expand_as(lse2)]).all()
        assert torch.allclose(lse2[real.expand_as(lse2)], lse_ref[real.expand_as(lse_ref)], atol=2e-4, rtol=1e-5)
        if window_mass:
            assert torch.allclose(wmass, wmass_ref, atol=2e-5)
        else:
            assert wmass is None
    if hq // hkv > 1:
        with pytest.raises(ValueError, match="divides the"):
            sampled_row_stats(q, k, rows.rows, window, scale=scale, block_s=rows.block, heads_per_program=3)


@pytest.mark.parametrize("block_n", [32, 64, 128])
@pytest.mark.parametrize("q_per_sel", [1, "group"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_column_scores_match_dense_rows(case, q_per_sel, block_n):
    seqlen_q, seqlen_k, hq, hkv, d, windows, n_rows, kernel_block, dtype = case
    q_per_sel = hq // hkv if q_per_sel == "group" else 1
    q, k, _ = qkv(1, seqlen_q, seqlen_k, hq, hkv, d, dtype, seed=seqlen_k + block_n)
    window = torch.tensor(windows, dtype=torch.int32, device=DEVICE)
    rows = sampled(seqlen_q, seqlen_k, windows, n_rows=n_rows, kernel_block=kernel_block)
    scale = d ** -0.5
    lse_ref, _, p_out = dense_rows(q, k, rows.rows, window, scale)
    tiles = score_tile_ranges(rows.rows, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_s=rows.block,
                              block_n=block_n)
    first_block, free_block = tiles
    n_blocks = rows.rows.numel() // rows.block
    # The case exercises both paths: some tiles have masked blocks and unmasked ones.
    assert ((free_block > first_block) & (free_block < n_blocks)).any()
    assert (free_block >= first_block).all()
    scores = column_scores(q, k, rows.rows, window, lse_ref.contiguous(), rows.seg_blocks, q_per_sel=q_per_sel,
                           scale=scale, block_s=rows.block, block_n=block_n, tile_ranges=tiles)
    want = p_out.sum(2).view(1, hq // q_per_sel, q_per_sel, seqlen_k).sum(2).unsqueeze(2)
    assert torch.allclose(scores, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="same block_n"):
        column_scores(q, k, rows.rows, window, lse_ref.contiguous(), rows.seg_blocks, q_per_sel=q_per_sel,
                      scale=scale, block_s=rows.block, block_n=block_n * 2, tile_ranges=tiles)


def test_tile_ranges_skip_and_free_exactly_the_right_blocks():
    """Brute force over blocks and tiles: a skipped block adds nothing to the tile, and in a free
    block every real row keeps every column of the tile (with any head's window)."""
    seqlen_q, seqlen_k, windows, block_n = 500, 620, [25, 60], 32
    rows = sampled(seqlen_q, seqlen_k, windows, n_rows=160, kernel_block=16)
    window = torch.tensor(windows, dtype=torch.int32, device=DEVICE)
    first_block, free_block = score_tile_ranges(rows.rows, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                                                block_s=rows.block, block_n=block_n)
    blocks = rows.rows.view(-1, rows.block).tolist()
    offset = seqlen_k - seqlen_q
    for t in range(first_block.numel()):
        cols = range(t * block_n, min((t + 1) * block_n, seqlen_k))
        for b, block in enumerate(blocks):
            real = [offset + r for r in block if r >= 0]
            scores_any = any(c <= p - w for p in real for w in windows for c in cols)
            keeps_all = all(c <= p - w for p in real for w in windows for c in cols)
            if b < first_block[t]:
                assert not scores_any
            if b >= free_block[t]:
                assert keeps_all


@pytest.mark.parametrize("granularity,segment_rows", [("kv_head", None), ("query_head", 128), ("kv_head", 192)])
def test_window_mass_from_scores_equals_the_rows_window_mass(granularity, segment_rows):
    """The fast plan's window mass (counted pairs minus the scores' total) is the per-row sum."""
    q, k, _ = qkv(2, 640, 640, 4, 2, 64, torch.float32, seed=3)
    config = SampleAttentionConfig(alpha=0.9, window_ratio=0.06, sample_ratio=0.3, gqa_granularity=granularity,
                                   segment_rows=segment_rows, block_m=64, dense_below=0)
    full = plan_ref(q, k, config, keep_scores=True)
    rows = choose_sampled_rows(640, 640, n_rows=config.sampled_rows(640), min_window=39, block=16,
                               segment_rows=segment_rows or 640, device=DEVICE)
    window = full.window
    q_per_sel = full.q_per_sel
    lse_ref, wmass_ref, _ = dense_rows(q, k, rows.rows, window, 64 ** -0.5)
    shape = {"seqlen_q": 640, "seqlen_k": 640, "q_per_sel": q_per_sel}
    window_sum, n_counted, _, _ = summarize_rows(wmass_ref, torch.zeros_like(wmass_ref), rows, window, **shape)
    _, _, n_counted_1 = counted_pairs(rows, window, batch=1, **shape)
    assert torch.equal(n_counted_1.expand(2, -1, -1), n_counted)
    derived = window_mass_from_scores(full.scores, n_counted)
    assert torch.allclose(derived, window_sum, atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize("granularity", ["kv_head", "query_head"])
def test_fast_plan_without_reports_matches_the_reference(granularity):
    q, k, _ = qkv(1, 700, 700, 4, 2, 64, torch.float32, seed=5)
    config = SampleAttentionConfig(alpha=0.9, window_ratio=0.05, sample_ratio=0.3, gqa_granularity=granularity,
                                   block_m=64, dense_below=0)
    fast = plan(q, k, config, reports=False, keep_scores=True)
    slow = plan_ref(q, k, config, reports=False, keep_scores=True)
    assert fast.retained_min is None and fast.retained_mean is None
    assert torch.allclose(fast.scores, slow.scores, atol=1e-5, rtol=1e-4)
    # Near-ties at the threshold may flip one column; everything else must agree.
    assert (fast.col_count - slow.col_count).abs().max() <= 1
    assert torch.allclose(fast.density, slow.density, atol=0.01)
    with_reports = plan(q, k, config)
    assert (with_reports.col_count - fast.col_count).abs().max() <= 1
