"""Launcher of stage 3: sparse FlashAttention over a window band plus gathered key columns.

This module validates nothing about the method (the plan is trusted); it checks only what
would make the kernel read out of bounds, computes the per-query-block column counts, and
launches. The oracle with the same inputs is `sampleattn.reference.sparse_attention_ref`.
"""

from __future__ import annotations

import math

import torch
import triton

from ._sparse_attention_jit import sparse_attention_fwd_kernel
from ._specialization import batch_stride
from .sampling import dot_precision
from .tiles import launch_for, padded_head_dim

__all__ = ["COMPACT_MEMORY_SHARE", "MAX_GRID_Y", "blocks_left_of_window", "blocks_with_columns", "check_grid_y",
           "column_members", "columns_left_of_window", "compact_columns", "sparse_attention_fwd"]

#: CUDA limits grid dimensions y and z to 65,535; batch * heads goes on y.
MAX_GRID_Y = 65_535


def check_grid_y(programs: int, what: str) -> None:
    """Raise `ValueError` when ``programs`` (``what``, e.g. ``"batch * nheads_kv"``) do not fit on
    the grid's y axis (`MAX_GRID_Y`)."""
    if programs > MAX_GRID_Y:
        raise ValueError(f"{what} = {programs} exceeds the CUDA grid limit {MAX_GRID_Y}; split the batch into "
                         "smaller calls")

#: The compact copy of the selected keys and values is made only while it takes at most this
#: share of the inputs' memory (q, k and v): the operator's extra memory stays bounded.
COMPACT_MEMORY_SHARE = 0.08


def compact_columns(
    k: torch.Tensor, v: torch.Tensor | None, col_idx: torch.Tensor, *, q_per_sel: int, q_per_kv: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The selected columns' keys and values side by side, for contiguous loads in stage 3.

    Args:
        k, v: (B, Sk, Hkv, D) (v may be None: only keys are copied).
        col_idx: (B, Hsel, n_seg, kmax) int32, padded with Sk; each selection head's query
            heads share one KV head (``q_per_sel`` a multiple of ``q_per_kv``).
    Returns:
        k_sel, v_sel: (B, Hsel, n_seg, kmax, D), entry c being row ``col_idx[..., c]`` of k and v
        (padding entries hold row Sk - 1; the kernel never uses them).
    """
    batch, n_sel = col_idx.shape[:2]
    idx = col_idx.clamp(max=k.shape[1] - 1).to(torch.int64)
    kv_head = (torch.arange(n_sel, device=k.device) * q_per_sel // q_per_kv).view(1, -1, 1, 1)
    b = torch.arange(batch, device=k.device).view(-1, 1, 1, 1)
    return k[b, idx, kv_head], (None if v is None else v[b, idx, kv_head])


def use_compact_columns(q, k, v, col_idx, *, q_per_sel: int, lse_only: bool) -> bool:
    """Whether stage 3 reads the selected columns from a compact copy (`compact_columns`): when
    every selection head maps to one KV head (KV-head granularity, or no GQA) and the copy
    stays within `COMPACT_MEMORY_SHARE` of the inputs."""
    q_per_kv = q.shape[2] // k.shape[2]
    if q_per_sel % q_per_kv:
        return False  # query-head selection under GQA: one copy per query head, too large
    copies = 1 if lse_only else 2
    extra = copies * col_idx.numel() * k.shape[-1]
    inputs = q.numel() + k.numel() + (0 if lse_only else v.numel())
    return extra <= COMPACT_MEMORY_SHARE * inputs


def _entries_left_of_window(
    idx: torch.Tensor, window: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_m: int,
    rows_per_list: int, unit: int, q_per_sel: int, q_offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts over sorted index lists, one list per selection head and group of ``rows_per_list``
    query rows; entry e stands for the keys ``[e * unit, (e + 1) * unit)``. For each (batch,
    query head, kernel query block of ``block_m`` rows): how many leading entries lie wholly
    left of the window of the block's first row, ``e < floor((first_pos - w + 1) / unit)``, and
    how many hold a key left of the window of its last row, ``e < floor((last_pos - w) / unit) + 1``.
    Row i sits at position ``q_offset + i`` (None: ``seqlen_k - seqlen_q``); entries past the
    keys' end are never counted (rows right of the last key: the bounds are clamped to
    ``floor(seqlen_k / unit)`` and ``ceil(seqlen_k / unit)``, which bottom-right rows never pass).

    Args:
        idx: (B, Hsel, n_lists, width) int32, ascending, padded with a value above every bound.
        window: (Hq,) int32 window width per query head.
    Returns:
        (B, Hq, n_mblocks) int32 twice. Memory O(B * Hq * seqlen_q / block_m).
    """
    batch, n_sel, n_lists, _ = idx.shape
    n_mb = triton.cdiv(seqlen_q, block_m)
    mb_per_list = rows_per_list // block_m
    device = idx.device
    mb = torch.arange(n_lists * mb_per_list, device=device)
    offset = seqlen_k - seqlen_q if q_offset is None else q_offset
    first_pos = offset + torch.clamp(mb * block_m, max=seqlen_q - 1)
    last_pos = offset + torch.clamp((mb + 1) * block_m, max=seqlen_q) - 1
    w = window.to(device=device, dtype=torch.int64).view(n_sel, q_per_sel, 1)
    all_hi = torch.div(first_pos.view(1, 1, -1) - w + 1, unit, rounding_mode="floor").clamp(max=seqlen_k // unit)
    end_hi = torch.div(last_pos.view(1, 1, -1) - w, unit, rounding_mode="floor") + 1
    end_hi = end_hi.clamp(max=-(-seqlen_k // unit))
    hi = torch.stack([all_hi, end_hi])  # (2, Hsel, q_per_sel, n_lists * mb_per_list)
    hi = hi.view(2, n_sel, q_per_sel, n_lists, mb_per_list).permute(1, 3, 0, 2, 4).reshape(1, n_sel, n_lists, -1)
    hi = hi.expand(batch, -1, -1, -1).clamp(min=0).contiguous().to(idx.dtype)
    counts = torch.searchsorted(idx.contiguous(), hi)  # entries strictly below hi
    counts = counts.view(batch, n_sel, n_lists, 2, q_per_sel, mb_per_list).permute(3, 0, 1, 4, 2, 5)
    counts = counts.reshape(2, batch, n_sel * q_per_sel, n_lists * mb_per_list)[..., :n_mb].to(torch.int32)
    return counts[0].contiguous(), counts[1].contiguous()


def columns_left_of_window(
    col_idx: torch.Tensor, window: torch.Tensor, *, seqlen_q: int, seqlen_k: int,
    block_m: int, segment_rows: int, q_per_sel: int, q_offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (batch, query head, query block): how many leading selected columns lie left of
    the window of the block's first row (``< first_pos - w + 1``: the columns every row of the
    block keeps) and of its last row (``< last_pos - w + 1``), in one search.

    Args:
        col_idx: (B, Hsel, n_seg, kmax) int32, ascending, padded with ``seqlen_k``.
        window: (Hq,) int32 window width per query head.
    Returns:
        col_all, col_end: (B, Hq, n_mblocks) int32 each. Memory O(B * Hq * seqlen_q / block_m):
        never O(seqlen^2).
    """
    return _entries_left_of_window(col_idx, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_m=block_m,
                                   rows_per_list=segment_rows, unit=1, q_per_sel=q_per_sel, q_offset=q_offset)


def blocks_left_of_window(
    blk_idx: torch.Tensor, window: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_m: int,
    block_rows: int, key_block: int, q_per_sel: int, q_offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (batch, query head, kernel query block of ``block_m`` rows): how many leading
    chosen key blocks lie wholly left of the window of the block's first row (every row keeps
    all their keys) and how many hold a key left of the window of its last row.

    Args:
        blk_idx: (B, Hsel, n_qblocks, kbmax) int32 ascending, padded with n_kblocks; query block
            t of ``block_rows`` rows (a multiple of block_m).
        window: (Hq,) int32.
    Returns:
        blk_all, blk_end: (B, Hq, n_mblocks) int32 each.
    """
    return _entries_left_of_window(blk_idx, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_m=block_m,
                                   rows_per_list=block_rows, unit=key_block, q_per_sel=q_per_sel, q_offset=q_offset)


def column_members(col_idx: torch.Tensor, seqlen_k: int) -> torch.Tensor:
    """(B, Hsel, n_seg, kmax) int32 columns padded with Sk -> (B, Hsel, Sk) uint8, 1 where a key is
    a selected column of the (single) segment."""
    batch, n_sel = col_idx.shape[:2]
    member = torch.zeros((batch, n_sel, seqlen_k + 1), dtype=torch.uint8, device=col_idx.device)
    member.scatter_(2, col_idx[:, :, 0].to(torch.int64), 1)
    return member[:, :, :seqlen_k]


def blocks_with_columns(member: torch.Tensor, key_block: int) -> torch.Tensor:
    """(B, Hsel, Sk) uint8 column members -> (B, Hsel, ceil(Sk / key_block)) uint8, 1 where a key
    block holds at least one selected column."""
    pad = -member.shape[-1] % key_block
    padded = torch.nn.functional.pad(member, (0, pad))
    return padded.view(*member.shape[:2], -1, key_block).amax(dim=-1).contiguous()


def sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    col_idx: torch.Tensor,
    window: torch.Tensor,
    *,
    segment_rows: int,
    q_per_sel: int,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
    return_lse: bool = False,
    lse_only: bool = False,
    m_stride: int = 1,
    num_warps: int | None = None,
    num_stages: int | None = None,
    compact: bool | None = None,
    blk_idx: torch.Tensor | None = None,
    block_rows: int = 0,
    key_block: int = 0,
    has_columns: bool = True,
    q_offset: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run the stage-3 kernel.

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D), same dtype and device, last dim contiguous.
        col_idx: (B, Hsel, n_seg, kmax) int32 selected columns, ascending, padded with Sk.
        window: (Hq,) int32 window width per query head.
        segment_rows: query rows per column set (a multiple of block_m; Sq rounded up for one set).
        q_per_sel: query heads per selection head (1, or Hq // Hkv for KV-head granularity).
        scale: softmax scale applied to q.k.
        block_m, block_n, num_warps, num_stages: the launch (`tiles.launch_for`): None takes the
            tile table's (64 x 64 tiles); tiles larger than the head dim and dtype allow are cut
            down (64 x 64 above head dim 128, 64 keys for fp32 at head dims 65-128).
        lse_only: compute only the log-sum-exp over the window and the columns (no V, no
            output): the first pass of the rescoring selection. Implies ``return_lse``.
        m_stride: run only query blocks ``t`` with ``t = n_mblocks - 1 (mod m_stride)`` (the
            last block always); rows of the other blocks get an undefined lse. 1 = all blocks.
        compact: read the selected columns from a compact copy of their keys and values
            (contiguous tiles) instead of gathering them by index; None decides by
            `use_compact_columns` (needs KV-head granularity; bounded extra memory).
        blk_idx: (B, Hsel, n_qblocks, kbmax) int32 key blocks chosen per query block of
            ``block_rows`` rows (blocks of ``key_block`` keys), ascending, padded with n_kblocks;
            needs a single segment. ``has_columns=False`` says col_idx holds no column (the
            block loop then skips no key).
        q_offset: the key position of query row 0 (row i sits at ``q_offset + i``, sees keys
            ``j <= q_offset + i`` and its window ``(q_offset + i - w, q_offset + i]``); None is
            ``seqlen_k - seqlen_q``, bottom-right alignment. Any integer: a chunk of a longer
            sequence may start before its keys (leading rows see fewer or no keys) or after
            them (all keys left of every row). Column and block indices stay key indices.
    Returns:
        out (B, Sq, Hq, D) in q's dtype (None with ``lse_only``), and lse (B, Hq, Sq) fp32
        natural log-sum-exp (or None).
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    _, seqlen_k, nheads_kv, _ = k.shape
    check_grid_y(batch * nheads_kv, "batch * nheads_kv")
    launch = launch_for("sparse_attention", head_dim=head_dim, dtype=q.dtype, block_m=block_m, block_n=block_n,
                        num_warps=num_warps, num_stages=num_stages)
    block_m, block_n = launch.block_m, launch.block_n
    block_d = padded_head_dim(head_dim)
    if blk_idx is not None:
        block_n = min(block_n, key_block)
        block_m = min(block_m, block_rows)
        if key_block % block_n or block_rows % block_m or col_idx.shape[2] != 1:
            raise ValueError(f"key blocks of {key_block} keys per {block_rows} rows need key tiles dividing "
                             f"{key_block} (block_n={block_n}), query tiles dividing {block_rows} "
                             f"(block_m={block_m}) and one column segment")
    if segment_rows % block_m:
        raise ValueError(f"segment_rows={segment_rows} must be a multiple of block_m={block_m}")
    col_idx = col_idx.contiguous()
    q_offset = seqlen_k - seqlen_q if q_offset is None else int(q_offset)
    col_all, col_end = columns_left_of_window(
        col_idx, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_m=block_m, segment_rows=segment_rows,
        q_per_sel=q_per_sel, q_offset=q_offset,
    )
    return_lse = return_lse or lse_only
    out = torch.empty((1, 1, 1, 1), device=q.device, dtype=q.dtype) if lse_only else torch.empty_like(q)
    lse = torch.empty((batch, nheads_q, seqlen_q), device=q.device, dtype=torch.float32) if return_lse \
        else torch.empty((1, 1, 1), device=q.device, dtype=torch.float32)
    n_mblocks = triton.cdiv(seqlen_q, block_m)
    if m_stride < 1:
        raise ValueError(f"m_stride={m_stride} must be >= 1")
    m_first = (n_mblocks - 1) % m_stride
    q_per_kv = nheads_q // nheads_kv
    if compact is None:
        compact = use_compact_columns(q, k, v, col_idx, q_per_sel=q_per_sel, lse_only=lse_only)
    elif compact and q_per_sel % q_per_kv:
        raise ValueError(f"compact columns need each selection head inside one KV head; q_per_sel={q_per_sel} "
                         f"is not a multiple of {q_per_kv} query heads per KV head")
    if compact:
        k_sel, v_sel = compact_columns(k, None if lse_only else v, col_idx, q_per_sel=q_per_sel, q_per_kv=q_per_kv)
        v_sel = k_sel if v_sel is None else v_sel
        sel_strides = (batch_stride(k_sel), k_sel.stride(1), k_sel.stride(2), k_sel.stride(3))
    else:
        k_sel, v_sel, sel_strides = k, v, (0, 0, 0, 0)  # unused by the kernel
    has_blocks = blk_idx is not None
    if has_blocks:
        blk_idx = blk_idx.contiguous()
        blk_all, blk_end = blocks_left_of_window(blk_idx, window, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                                                 block_m=block_m, block_rows=block_rows, key_block=key_block,
                                                 q_per_sel=q_per_sel, q_offset=q_offset)
        blk_strides = (batch_stride(blk_idx), blk_idx.stride(1), blk_idx.stride(2))
        if has_columns:
            member = column_members(col_idx, seqlen_k)
            flags = blocks_with_columns(member, key_block)
            member_strides = (batch_stride(member), member.stride(1), batch_stride(flags), flags.stride(1))
        else:
            member, flags, member_strides = col_idx, col_idx, (0, 0, 0, 0)
    else:  # unused by the kernel
        blk_idx, blk_all, blk_end, member, flags = col_idx, col_all, col_end, col_idx, col_idx
        blk_strides, member_strides = (0, 0, 0), (0, 0, 0, 0)
    # The query heads of one KV head vary fastest (see the kernel's program order).
    grid = (triton.cdiv(n_mblocks - m_first, m_stride) * q_per_kv, batch * nheads_kv)
    sparse_attention_fwd_kernel[grid](
        q, k, v, out, lse, col_idx, col_end, col_all, window, k_sel, v_sel, blk_idx, blk_end, blk_all, member, flags,
        batch_stride(q), q.stride(1), q.stride(2),
        batch_stride(k), k.stride(1), k.stride(2),
        batch_stride(v), v.stride(1), v.stride(2),
        *sel_strides,
        batch_stride(out), out.stride(1), out.stride(2),
        batch_stride(lse), lse.stride(1),
        batch_stride(col_idx), col_idx.stride(1), col_idx.stride(2),
        batch_stride(col_end), col_end.stride(1),
        *blk_strides,
        *member_strides,
        nheads_q, seqlen_q, seqlen_k, q_offset, scale * math.log2(math.e),
        nheads_q // nheads_kv, q_per_sel, segment_rows, m_stride, m_first, max(block_rows, 1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, DOT_PRECISION=dot_precision(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n,
        RETURN_LSE=return_lse, LSE_ONLY=lse_only, COMPACT=compact, HAS_BLOCKS=has_blocks,
        KEY_BLOCK=key_block if has_blocks else 16, SKIP_COLUMNS=has_blocks and has_columns,  # 16: unused
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )
    return (None if lse_only else out), (lse if return_lse else None)
