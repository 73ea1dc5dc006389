"""Stage 3 (the sparse attention kernel) against dense attention under the plan's mask.

Plans here are made by hand (random windows and columns, columns inside windows included),
so the kernel is tested apart from the selection.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from sampleattn import sparse_attention
from sampleattn.reference import attention_ref, causal_mask, sparse_attention_ref

from kernel_helpers import DEVICE, assert_close_to_golden, hand_plan, qkv, rel_err

# (seqlen_q, seqlen_k): lengths around the block size (64), odd ones, and chunked prefill.
LENGTHS = [(1, 1), (1, 97), (63, 63), (64, 64), (65, 65), (97, 97), (97, 256), (256, 256), (200, 1025)]
# (nheads_q, nheads_kv): GQA ratios 1, 3, 4 and MQA.
HEADS = [(2, 2), (3, 1), (8, 2), (4, 1)]
DTYPES = [torch.float16, torch.float32]


def random_columns(rng, seqlen_k, count):
    return rng.sample(range(seqlen_k), min(count, seqlen_k))


def make_case(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype, *, q_per_sel=1,
              segment_rows=None, block_m=64, seed=0):
    rng = random.Random(seed)
    q, k, v = qkv(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype, seed=seed)
    windows = [rng.randint(1, max(1, seqlen_k // 4)) for _ in range(nheads_q)]
    n_sel = nheads_q // q_per_sel
    segment_rows = segment_rows or -(-seqlen_q // block_m) * block_m
    n_seg = -(-seqlen_q // segment_rows)
    columns = [[[random_columns(rng, seqlen_k, rng.randint(0, max(1, seqlen_k // 3)))
                 for _ in range(n_seg)] for _ in range(n_sel)] for _ in range(batch)]
    plan = hand_plan(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, windows=windows, columns=columns,
                     q_per_sel=q_per_sel, segment_rows=segment_rows, block_m=block_m,
                     scale=1 / math.sqrt(head_dim))
    return q, k, v, plan


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seqlen_q,seqlen_k", LENGTHS)
def test_kernel_matches_masked_dense(seqlen_q, seqlen_k, dtype):
    index = LENGTHS.index((seqlen_q, seqlen_k))
    nheads_q, nheads_kv = HEADS[index % len(HEADS)]
    head_dim = (64, 128)[index % 2]
    batch = 2 if index % 3 == 0 else 1
    q, k, v, plan = make_case(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype, seed=index)
    out, lse = sparse_attention(q, k, v, plan, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    mask = plan.to_dense()
    assert_close_to_golden(out, q, k, v, mask, plan.scale)
    _, lse_ref = attention_ref(q.float(), k.float(), v.float(), scale=plan.scale, mask=mask, return_lse=True)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(torch.isfinite(lse), finite)
    assert torch.allclose(lse[finite], lse_ref[finite], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("head_dim", [96, 256])
def test_kernel_odd_and_large_head_dims(head_dim):
    q, k, v, plan = make_case(1, 70, 90, 4, 2, head_dim, torch.float16, seed=7)
    out = sparse_attention(q, k, v, plan)
    assert_close_to_golden(out, q, k, v, plan.to_dense(), plan.scale)


@pytest.mark.parametrize("q_per_sel", [1, 4])
def test_kernel_segments_and_kv_head_sets(q_per_sel):
    """One column set per segment of 64 rows, shared by a KV group or per query head."""
    q, k, v, plan = make_case(2, 150, 180, 4, 1, 64, torch.float32, q_per_sel=q_per_sel,
                              segment_rows=64, seed=3)
    assert plan.n_segments == 3
    out = sparse_attention(q, k, v, plan)
    assert_close_to_golden(out, q, k, v, plan.to_dense(), plan.scale)


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(97, 97), (33, 200)])
def test_full_window_is_exact_attention(seqlen_q, seqlen_k):
    """Window = seqlen_k and no column: exact attention, checked against an independently built
    bottom-right causal mask (not the kernel's or the plan's mask code)."""
    q, k, v = qkv(1, seqlen_q, seqlen_k, 4, 2, 64, torch.float32, seed=11)
    plan = hand_plan(1, seqlen_q, seqlen_k, 4, 2, windows=[seqlen_k] * 4, columns=[[[[]] for _ in range(4)]],
                     scale=0.125)
    out = sparse_attention(q, k, v, plan)
    expected = attention_ref(q, k, v, scale=0.125)
    assert rel_err(out, expected) < 1e-5
    # The independent mask, written out: row i sees j <= i + (Sk - Sq).
    i = torch.arange(seqlen_q).view(-1, 1)
    j = torch.arange(seqlen_k).view(1, -1)
    assert torch.equal(causal_mask(seqlen_q, seqlen_k), j <= i + seqlen_k - seqlen_q)
    assert torch.equal(plan.to_dense()[0, 0].cpu(), j <= i + seqlen_k - seqlen_q)


def test_rows_with_no_key_give_zero_not_nan():
    """Window 0 and no column for some rows: those rows output 0 and lse -inf, never NaN,
    even when a later tile (a column) holds keys for other rows."""
    seqlen = 130
    q, k, v = qkv(1, seqlen, seqlen, 2, 1, 64, torch.float32, seed=5)
    # Column 100 is visible outside the (empty) window only for rows >= 100.
    plan = hand_plan(1, seqlen, seqlen, 2, 1, windows=[0, 0], columns=[[[[100]], [[100]]]], scale=0.125)
    out, lse = sparse_attention(q, k, v, plan, return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.all(out[0, :100] == 0)
    assert torch.all(torch.isinf(lse[0, :, :100]))
    # Rows >= 100 attend to key 100 alone: their output is exactly v[100].
    assert torch.allclose(out[0, 100:, 0], v[0, 100, 0].expand(seqlen - 100, -1), atol=1e-6)


def test_column_inside_window_counted_once():
    """The same mask two ways (a column also inside the window, or not selected): equal outputs."""
    q, k, v = qkv(1, 128, 128, 2, 2, 64, torch.float32, seed=9)
    inside = hand_plan(1, 128, 128, 2, 2, windows=[20, 20], columns=[[[[3, 120, 125]], [[3, 121]]]], scale=0.125)
    outside = hand_plan(1, 128, 128, 2, 2, windows=[20, 20], columns=[[[[3]], [[3]]]], scale=0.125)
    # Columns 120, 121, 125 lie in the window of every row that can see them.
    assert torch.equal(inside.to_dense(), outside.to_dense())
    a = sparse_attention(q, k, v, inside)
    b = sparse_attention(q, k, v, outside)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("nheads_q,nheads_kv", [(4, 4), (4, 1), (7, 1), (14, 2), (8, 2)])
def test_gqa_mapping_and_per_head_windows(nheads_q, nheads_kv):
    """Query head h reads KV head h // (Hq / Hkv); each head's own window lands on that head."""
    q, k, v = qkv(1, 80, 80, nheads_q, nheads_kv, 64, torch.float32, seed=nheads_q)
    windows = [3 + 5 * h for h in range(nheads_q)]
    plan = hand_plan(1, 80, 80, nheads_q, nheads_kv, windows=windows,
                     columns=[[[[0, 1, h]] for h in range(nheads_q)]], scale=0.125)
    out = sparse_attention(q, k, v, plan)
    for h in range(nheads_q):
        kv = h // (nheads_q // nheads_kv)
        mask = plan.to_dense()[0, h]
        expected = attention_ref(q[:, :, h:h + 1], k[:, :, kv:kv + 1], v[:, :, kv:kv + 1], scale=0.125,
                                 mask=mask)
        assert rel_err(out[:, :, h:h + 1], expected) < 1e-5, f"head {h}"
        assert int(mask[-1].sum()) == windows[h] + len({0, 1, h} - set(range(80 - windows[h], 80)))


def test_grid_limit_is_explicit():
    """batch * KV heads beyond the CUDA grid's y limit is refused with a message, never skipped."""
    from sampleattn.kernels import MAX_GRID_Y, sparse_attention_fwd

    heads = MAX_GRID_Y + 1
    q = torch.randn(1, 1, heads, 64, device=DEVICE, dtype=torch.float16)
    k = torch.randn(1, 1, heads, 64, device=DEVICE, dtype=torch.float16)
    col_idx = torch.ones(1, heads, 1, 1, dtype=torch.int32, device=DEVICE)
    window = torch.ones(heads, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="grid limit"):
        sparse_attention_fwd(q, k, k, col_idx, window, segment_rows=64, q_per_sel=1, scale=0.1)


@pytest.mark.parametrize("seqlen_q,seqlen_k,block_m,block_n", [(300, 300, 32, 16), (200, 450, 64, 32), (129, 129, 16, 16)])
def test_small_tiles_run_both_gathered_loops(seqlen_q, seqlen_k, block_m, block_n):
    """Many columns and small tiles: most column tiles lie left of every row's window (the
    unmasked loop) and some straddle the block's windows (the masked loop)."""
    g = torch.Generator().manual_seed(seqlen_k)
    q, k, v = qkv(1, seqlen_q, seqlen_k, 4, 2, 64, torch.float32, seed=1)
    columns = [[[torch.randperm(seqlen_k, generator=g)[: seqlen_k // 3].tolist()] for _ in range(4)]]
    p = hand_plan(1, seqlen_q, seqlen_k, 4, 2, windows=[5, 12, 19, 26], columns=columns, block_m=block_m,
                  scale=64 ** -0.5)
    out = sparse_attention(q, k, v, p, block_m=block_m, block_n=block_n)
    assert rel_err(out, sparse_attention_ref(q, k, v, p)) < 1e-5


COMPACT_CASES = [
    # (batch, Sq, Sk, Hq, Hkv, q_per_sel, segment_rows, block_m, block_n, dtype)
    (1, 300, 300, 4, 2, 2, None, 32, 16, torch.float32),  # KV-head sets, small tiles: both column loops
    (2, 150, 180, 4, 1, 4, 64, 64, 32, torch.float32),  # segments
    (1, 200, 450, 3, 3, 1, None, 64, 64, torch.float16),  # no GQA, Sq < Sk
    (1, 97, 97, 8, 2, 4, None, 16, 16, torch.float16),
]


@pytest.mark.parametrize("case", COMPACT_CASES, ids=lambda c: f"{c[1]}x{c[2]}-{c[3]}/{c[4]}-sel{c[5]}-bm{c[7]}")
def test_compact_columns_give_the_gathered_result(case):
    """Stage 3 reading the selected keys and values from their compact copy equals the gathered
    path and the oracle, with the output and the lse, and in the lse-only mode."""
    from sampleattn.kernels import sparse_attention_fwd

    batch, seqlen_q, seqlen_k, hq, hkv, q_per_sel, segment_rows, block_m, block_n, dtype = case
    q, k, v, plan = make_case(batch, seqlen_q, seqlen_k, hq, hkv, 64, dtype, q_per_sel=q_per_sel,
                              segment_rows=segment_rows, block_m=block_m, seed=seqlen_k)
    kwargs = dict(segment_rows=plan.segment_rows, q_per_sel=q_per_sel, scale=plan.scale, block_m=block_m,
                  block_n=block_n, return_lse=True)
    out_c, lse_c = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, compact=True, **kwargs)
    out_g, lse_g = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, compact=False, **kwargs)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel_err(out_c, out_g) < tol
    finite = torch.isfinite(lse_g)
    assert torch.equal(torch.isfinite(lse_c), finite)
    assert torch.allclose(lse_c[finite], lse_g[finite], atol=1e-4)
    assert_close_to_golden(out_c, q, k, v, plan.to_dense(), plan.scale)
    _, lse_only = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, compact=True, lse_only=True, **kwargs)
    assert torch.allclose(lse_only[finite], lse_g[finite], atol=1e-4)


def test_compact_columns_copy_the_right_rows_and_are_chosen_by_memory():
    from sampleattn.kernels.sparse_attention import (
        COMPACT_MEMORY_SHARE, compact_columns, sparse_attention_fwd, use_compact_columns,
    )

    q, k, v = qkv(2, 64, 100, 4, 2, 32, torch.float32, seed=2)
    col_idx = torch.tensor([[[[3, 50, 99, 100]], [[0, 7, 100, 100]]]] * 2, dtype=torch.int32, device=DEVICE)
    k_sel, v_sel = compact_columns(k, v, col_idx, q_per_sel=2, q_per_kv=2)
    assert k_sel.shape == (2, 2, 1, 4, 32)
    assert torch.equal(k_sel[1, 1, 0, 1], k[1, 7, 1]) and torch.equal(v_sel[0, 0, 0, 2], v[0, 99, 0])
    assert torch.equal(k_sel[0, 0, 0, 3], k[0, 99, 0])  # padding reads the last row (never used)
    # Query-head sets under GQA would need one copy per query head: never compact.
    assert not use_compact_columns(q, k, v, col_idx.repeat(1, 2, 1, 1), q_per_sel=1, lse_only=False)
    window = torch.full((4,), 8, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="KV head"):
        sparse_attention_fwd(q, k, v, col_idx.repeat(1, 2, 1, 1), window, segment_rows=64, q_per_sel=1,
                             scale=0.1, compact=True)
    # Chosen while the copy stays within its share of the inputs' memory.
    inputs = q.numel() + k.numel() + v.numel()
    fits = int(COMPACT_MEMORY_SHARE * inputs // (2 * 2 * 2 * 32))  # kmax for which 2 copies fit
    small = torch.zeros(2, 2, 1, fits, dtype=torch.int32, device=DEVICE)
    large = torch.zeros(2, 2, 1, fits + 1, dtype=torch.int32, device=DEVICE)
    assert use_compact_columns(q, k, v, small, q_per_sel=2, lse_only=False)
    assert not use_compact_columns(q, k, v, large, q_per_sel=2, lse_only=False)


# (batch, Sq, Sk, Hq, Hkv, q_per_sel, q_offset, key_block (0: no blocks), segment_rows, block_m, block_n, dtype)
OFFSET_CASES = [
    (1, 97, 150, 4, 2, 1, -30, 0, None, 32, 32, torch.float32),  # leading rows before the first key
    (2, 130, 90, 4, 1, 4, 200, 16, None, 64, 16, torch.float16),  # every key left of every row, Sq > Sk
    (1, 70, 200, 2, 2, 1, 45, 32, None, 32, 32, torch.float32),  # rows in the middle of the keys
    (1, 100, 64, 8, 2, 4, 64, 16, None, 32, 16, torch.float16),  # rows right after the keys (GQA 4)
    (1, 150, 120, 4, 2, 2, -10, 0, 64, 32, 32, torch.float32),  # one column set per segment of 64 rows
]


def offset_case(case, seed=0):
    """q, k, v and a hand plan (random windows, columns and, with a key block, key blocks per
    query block) for a case of `OFFSET_CASES`."""
    import dataclasses

    from sampleattn.sparse_plan import KeyBlocks

    batch, seqlen_q, seqlen_k, hq, hkv, q_per_sel, _, key_block, segment_rows, block_m, _, dtype = case
    q, k, v, plan = make_case(batch, seqlen_q, seqlen_k, hq, hkv, 64, dtype, q_per_sel=q_per_sel,
                              segment_rows=segment_rows, block_m=block_m, seed=seed)
    # every other head keeps its whole past as its window: the band's unmasked interior tiles
    wide = plan.window.clone()
    wide[1::2] = seqlen_q + seqlen_k
    plan = dataclasses.replace(plan, window=wide)
    if not key_block:
        return q, k, v, plan
    g = torch.Generator().manual_seed(seed)
    n_kb, n_qb = -(-seqlen_k // key_block), -(-seqlen_q // block_m)
    chosen = torch.rand(batch, hq // q_per_sel, n_qb, n_kb, generator=g) < 0.4
    blk_idx = torch.where(chosen, torch.arange(n_kb), n_kb).sort(dim=-1).values.to(torch.int32)
    blocks = KeyBlocks(blk_idx=blk_idx.to(DEVICE), blk_count=chosen.sum(-1).to(torch.int32).to(DEVICE),
                       block_rows=block_m, key_block=key_block)
    return q, k, v, dataclasses.replace(plan, blocks=blocks)


@pytest.mark.parametrize("case", OFFSET_CASES, ids=lambda c: f"{c[1]}x{c[2]}-at{c[6]}-{c[3]}/{c[4]}-kb{c[7]}")
def test_query_offset_matches_the_reference(case):
    """Query rows placed anywhere along the keys (``q_offset``): the kernel equals the oracle with
    the same offset, in the output and the lse, through the gathered and the compact column loads."""
    from sampleattn.kernels import sparse_attention_fwd

    q_offset, block_m, block_n, dtype = case[6], case[9], case[10], case[11]
    q, k, v, plan = offset_case(case, seed=case[1])
    blocks = {}
    if plan.blocks is not None:
        blocks = dict(blk_idx=plan.blocks.blk_idx, block_rows=plan.blocks.block_rows, key_block=plan.blocks.key_block)
    ref, lse_ref = sparse_attention_ref(q.float(), k.float(), v.float(), plan, return_lse=True, q_offset=q_offset)
    lead = max(0, -q_offset)  # rows before the first key keep nothing
    assert lead == 0 or torch.isinf(lse_ref[:, :, :lead]).all()
    for compact in (False, True) if case[5] % (case[3] // case[4]) == 0 else (False,):
        out, lse = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, segment_rows=plan.segment_rows,
                                        q_per_sel=plan.q_per_sel, scale=plan.scale, block_m=block_m, block_n=block_n,
                                        return_lse=True, q_offset=q_offset, compact=compact, **blocks)
        assert not torch.isnan(out).any()
        assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3), compact
        finite = torch.isfinite(lse_ref)
        assert torch.equal(torch.isfinite(lse), finite)
        assert torch.allclose(lse[finite], lse_ref[finite], atol=2e-3, rtol=1e-3)


def test_bottom_right_offset_is_the_default():
    """``q_offset = Sk - Sq`` is what the kernel does without one: bit-identical outputs."""
    from sampleattn.kernels import sparse_attention_fwd

    q, k, v, plan = make_case(1, 70, 130, 4, 2, 64, torch.float16, seed=4)
    kwargs = dict(segment_rows=plan.segment_rows, q_per_sel=1, scale=plan.scale, return_lse=True)
    out, lse = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, **kwargs)
    out_at, lse_at = sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, q_offset=60, **kwargs)
    assert torch.equal(out, out_at) and torch.equal(lse, lse_at)
