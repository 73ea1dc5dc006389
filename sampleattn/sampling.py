"""Which query rows stage 1 samples (shared by the kernels and the reference).

Rows come in contiguous blocks of ``block`` rows spread at a regular stride over the rows that
can say something about stripes, the last block always ending at the last row (which sees the
whole context). A row whose visible keys all lie inside its window (``p_i < w``) is never
sampled; with per-head windows the narrowest window decides, and the score pass ignores a row
for a head whose own window covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SampledRows", "choose_sampled_rows"]


@dataclass(frozen=True)
class SampledRows:
    """The sampled rows, laid out for the kernels.

    The kernels process the rows in blocks of ``block`` slots (one program each); a block holds
    rows of one segment only, and may hold several contiguous runs of sampled rows.

    Attributes:
        rows: (n_blocks * block,) int32 query-row indices, ascending, -1 for padding slots.
        seg_blocks: (n_seg + 1,) int32: row blocks of segment s are [seg_blocks[s], seg_blocks[s+1]).
        block_seg: (n_blocks,) int32 segment of each row block.
        block: rows (slots) per kernel block.
        valid_rows: (n_rows,) int64 the sampled row indices without padding.
    """

    rows: torch.Tensor
    seg_blocks: torch.Tensor
    block_seg: torch.Tensor
    block: int
    valid_rows: torch.Tensor


def _blocks_in_range(lo: int, hi: int, n_rows: int, block: int) -> list[list[int]]:
    """Blocks of rows in [lo, hi): about n_rows rows, evenly spread, the last ending at hi."""
    span = hi - lo
    if span <= 0:
        return []
    n_blocks = max(1, -(-n_rows // block))
    if n_blocks * block >= span:  # sampling everything there is
        return [list(range(s, min(s + block, hi))) for s in range(lo, hi, block)]
    last_start = hi - block
    if n_blocks == 1:
        starts = [last_start]
    else:
        # floor(k * d) steps with d >= block never overlap.
        starts = [lo + (k * (last_start - lo)) // (n_blocks - 1) for k in range(n_blocks)]
    return [list(range(s, s + block)) for s in starts]


def kernel_block_for(n_rows: int) -> int:
    """Slots per kernel program: 64 rows make tensor-core-sized tiles once there are enough
    rows; small inputs keep 16 (the smallest tile `tl.dot` takes), so little work is padding."""
    return 64 if n_rows >= 256 else 16


def choose_sampled_rows(
    seqlen_q: int, seqlen_k: int, *, n_rows: int, min_window: int, block: int,
    segment_rows: int, device: torch.device | str, kernel_block: int | None = None,
) -> SampledRows:
    """Choose about ``n_rows`` rows (per segment: in proportion to its length).

    Args:
        n_rows: rows to sample over the whole sequence (``ceil(sample_ratio * seqlen_q)``).
        min_window: the narrowest window over heads; rows with ``p_i < min_window`` are skipped.
        block: rows per contiguous sampled run (``config.sample_block``).
        segment_rows: rows per segment (seqlen_q or more for one segment).
        kernel_block: slots per kernel program (default `kernel_block_for(n_rows)`).
    """
    offset = seqlen_k - seqlen_q
    first_useful = max(0, min_window - offset)
    n_seg = -(-seqlen_q // segment_rows)
    blocks: list[list[int]] = []
    seg_blocks = [0]
    block_seg: list[int] = []
    for s in range(n_seg):
        lo, hi = s * segment_rows, min((s + 1) * segment_rows, seqlen_q)
        share = max(1, round(n_rows * (hi - lo) / seqlen_q))
        seg = _blocks_in_range(max(lo, first_useful), hi, share, block)
        blocks.extend(seg)
        block_seg.extend([s] * len(seg))
        seg_blocks.append(len(blocks))
    kernel_block = kernel_block or kernel_block_for(n_rows)
    # Pack each segment's rows into kernel blocks of `kernel_block` slots (padding with -1).
    flat: list[int] = []
    kernel_seg_blocks = [0]
    kernel_block_seg: list[int] = []
    for s in range(n_seg):
        seg_rows = [r for blk in blocks[seg_blocks[s]:seg_blocks[s + 1]] for r in blk]
        n_kernel_blocks = -(-len(seg_rows) // kernel_block)
        flat.extend(seg_rows + [-1] * (n_kernel_blocks * kernel_block - len(seg_rows)))
        kernel_block_seg.extend([s] * n_kernel_blocks)
        kernel_seg_blocks.append(kernel_seg_blocks[-1] + n_kernel_blocks)
    seg_blocks, block_seg, block = kernel_seg_blocks, kernel_block_seg, kernel_block
    if not flat:  # every row lies inside its window: one empty block keeps shapes simple
        flat = [-1] * block
        block_seg = [n_seg - 1]
        seg_blocks = [0] * n_seg + [1]
    return SampledRows(
        rows=torch.tensor(flat, dtype=torch.int32, device=device),
        seg_blocks=torch.tensor(seg_blocks, dtype=torch.int32, device=device),
        block_seg=torch.tensor(block_seg, dtype=torch.int32, device=device),
        block=block,
        valid_rows=torch.tensor([r for r in flat if r >= 0], dtype=torch.int64, device=device),
    )
