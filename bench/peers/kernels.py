"""Launchers of the peers' Triton kernels (`_jit.py`): check what would read out of bounds,
pick tiles, launch. The selections they consume are built by `vertical_slash.py` and
`flexprefill.py`; the oracles with the same inputs are in `reference.py`.

Tiles on the H200 (bf16): 128x64 tiles with 8 warps for FlexPrefill's 128x128 blocks, 64x64 with
4 warps for MInference's 64-row query blocks (its slashes become 64-key ranges); 2 pipeline
stages, loops without branches inside (`scripts/aot_compile_check.py` checks that every variant fits the 227 KiB of shared
memory of one block).
"""

from __future__ import annotations

import math

import torch
import triton

from sampleattn.kernels._specialization import batch_stride

from ._jit import block_sparse_attention_kernel, vertical_slash_attention_kernel

__all__ = ["MAX_GRID_Y", "block_sparse_fwd", "vertical_slash_fwd"]

#: CUDA limits grid dimensions y and z to 65,535; batch * heads goes on y.
MAX_GRID_Y = 65_535


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact products; tf32's error (about 1e-3) would hide the kernel's own.
    return "ieee" if dtype == torch.float32 else "tf32"


def _row_head_strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    """(batch, row, head) strides of each (B, S, H, D) tensor, in order, as the kernels take them."""
    return tuple(x for t in tensors for x in (batch_stride(t), t.stride(1), t.stride(2)))


def _launch_settings(head_dim: int, block_m: int, scale: float | None, num_warps: int | None,
                     num_stages: int | None) -> tuple[int, int, int, float]:
    """(BLOCK_D, num_warps, num_stages, log2-domain scale) of a launch: the head dim padded to a
    power of two (at least 16), 8 warps for 128-row tiles (else 4), 2 stages, 1/sqrt(d) unless
    given."""
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    return (max(16, triton.next_power_of_2(head_dim)), num_warps or (8 if block_m >= 128 else 4), num_stages or 2,
            scale * math.log2(math.e))


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"q (B, Sq, Hq, D) and k, v (B, Sk, Hkv, D) expected; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} does not match k {tuple(k.shape)}: same batch and head dim, and "
                         "a whole number of query heads per KV head")
    if q.shape[1] > k.shape[1]:
        raise ValueError(f"seqlen_q={q.shape[1]} > seqlen_k={k.shape[1]}: the queries are the last positions")
    if q.dtype != k.dtype or v.dtype != k.dtype or q.device != k.device or v.device != k.device:
        raise ValueError("q, k and v must share one dtype and one device")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k and v need a contiguous last (head) dimension")
    if q.shape[0] * q.shape[2] > MAX_GRID_Y:
        raise ValueError(f"batch * nheads_q = {q.shape[0] * q.shape[2]} exceeds the CUDA grid limit {MAX_GRID_Y}; "
                         "split the batch")


def _blocks_before(kv_idx: torch.Tensor, kv_count: torch.Tensor, *, seqlen_q: int, seqlen_k: int, q_block: int,
                   key_block: int, block_m: int) -> torch.Tensor:
    """(B, H, n_programs) int32: for each program of ``block_m`` rows, how many of its query
    block's listed key blocks end at or before its first row's position (the leading entries:
    the lists ascend), so that the kernel runs them without a mask."""
    n_programs = triton.cdiv(seqlen_q, block_m)
    first_pos = torch.arange(n_programs, device=kv_idx.device) * block_m + (seqlen_k - seqlen_q)
    below = ((first_pos + 1) // key_block).view(1, 1, -1, 1)  # key blocks < this end by first_pos
    qb = torch.arange(n_programs, device=kv_idx.device) * block_m // q_block
    listed = torch.arange(kv_idx.shape[-1], device=kv_idx.device) < kv_count[:, :, qb].unsqueeze(-1)
    return ((kv_idx[:, :, qb] < below) & listed).sum(-1, dtype=torch.int32).contiguous()


def block_sparse_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_idx: torch.Tensor, kv_count: torch.Tensor, *,
    q_block: int, key_block: int, scale: float | None = None, block_m: int | None = None,
    block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Attention of each query block over its listed key blocks (causal inside them).

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D).
        kv_idx: (B, Hq, ceil(Sq / q_block), max_blocks) int32, key-block numbers (blocks of
            ``key_block`` keys) ascending in the first ``kv_count`` entries of each row.
        kv_count: (B, Hq, ceil(Sq / q_block)) int32.
    Returns:
        (B, Sq, Hq, D) in q's dtype; a row that keeps no key gives 0.
    """
    _check_inputs(q, k, v)
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_qblocks = triton.cdiv(seqlen_q, q_block)
    if kv_idx.shape[:3] != (batch, nheads_q, n_qblocks) or kv_count.shape != (batch, nheads_q, n_qblocks):
        raise ValueError(f"kv_idx {tuple(kv_idx.shape)} / kv_count {tuple(kv_count.shape)} must be "
                         f"({batch}, {nheads_q}, {n_qblocks}, max_blocks) / ({batch}, {nheads_q}, {n_qblocks})")
    block_m = block_m or min(128, q_block)
    block_n = block_n or min(64, key_block)
    if q_block % block_m or key_block % block_n:
        raise ValueError(f"tiles {block_m}x{block_n} must divide the blocks {q_block}x{key_block}")
    block_d, num_warps, num_stages, qk_scale = _launch_settings(head_dim, block_m, scale, num_warps, num_stages)
    kv_idx = kv_idx.to(torch.int32).contiguous()
    kv_count = kv_count.to(torch.int32).contiguous()
    kv_full = _blocks_before(kv_idx, kv_count, seqlen_q=seqlen_q, seqlen_k=seqlen_k, q_block=q_block,
                             key_block=key_block, block_m=block_m)
    out = torch.empty_like(q)
    grid = (triton.cdiv(seqlen_q, block_m), batch * nheads_q)
    block_sparse_attention_kernel[grid](
        q, k, v, out, kv_idx, kv_count, kv_full,
        *_row_head_strides(q, k, v, out),
        batch_stride(kv_idx), kv_idx.stride(1), kv_idx.stride(2),
        batch_stride(kv_count), kv_count.stride(1),
        batch_stride(kv_full), kv_full.stride(1),
        nheads_q, seqlen_q, seqlen_k, qk_scale, nheads_q // nheads_kv,
        HEAD_DIM=head_dim, BLOCK_D=block_d, Q_BLOCK=q_block, KEY_BLOCK=key_block, BLOCK_M=block_m,
        BLOCK_N=block_n, DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out


def vertical_slash_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile_off: torch.Tensor, tile_len: torch.Tensor,
    tile_count: torch.Tensor, tile_first: torch.Tensor, cover: torch.Tensor, cols: torch.Tensor,
    col_end: torch.Tensor, block_m: int, block_n: int, scale: float | None = None, num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Attention over the key ranges of the selected diagonals plus the selected columns.

    The layout (see `vertical_slash_attention_kernel` and `VerticalSlashPlan`): tile_off,
    tile_len (B, Hq, max_tiles) int32; tile_count (B, Hq) int32; tile_first, col_end
    (B, Hq, ceil(Sq / block_m)) int32; cover (B, Hq, Sk + block_m) int8; cols (B, Hq, n_cols)
    int32 ascending. Every tile holds at most ``block_n`` keys.
    Returns (B, Sq, Hq, D) in q's dtype.
    """
    _check_inputs(q, k, v)
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    n_mblocks = triton.cdiv(seqlen_q, block_m)
    per_block = (batch, nheads_q, n_mblocks)
    if tile_first.shape != per_block or col_end.shape != per_block:
        raise ValueError(f"tile_first {tuple(tile_first.shape)} and col_end {tuple(col_end.shape)} must be {per_block}")
    if cover.shape != (batch, nheads_q, seqlen_k + block_m) or cover.dtype != torch.int8:
        raise ValueError(f"cover must be int8 ({batch}, {nheads_q}, {seqlen_k + block_m}); got "
                         f"{cover.dtype} {tuple(cover.shape)}")
    block_d, num_warps, num_stages, qk_scale = _launch_settings(head_dim, block_m, scale, num_warps, num_stages)
    tile_off, tile_len = tile_off.contiguous(), tile_len.contiguous()
    tile_count, cols, cover = tile_count.contiguous(), cols.contiguous(), cover.contiguous()
    tile_first, col_end = tile_first.contiguous(), col_end.contiguous()
    out = torch.empty_like(q)
    grid = (n_mblocks, batch * nheads_q)
    vertical_slash_attention_kernel[grid](
        q, k, v, out, tile_off, tile_len, tile_count, tile_first, cover, cols, col_end,
        *_row_head_strides(q, k, v, out),
        batch_stride(tile_off), tile_off.stride(1),
        batch_stride(tile_count), tile_count.stride(1),
        batch_stride(tile_first), tile_first.stride(1),
        batch_stride(cover), cover.stride(1),
        batch_stride(cols), cols.stride(1),
        nheads_q, seqlen_q, seqlen_k, qk_scale, nheads_q // nheads_kv,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out
