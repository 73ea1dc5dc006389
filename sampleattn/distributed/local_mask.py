"""The plan's mask restricted to one rank's query rows: which keys the rank must fetch, and the
log-sum-exp merge of attention over disjoint key sets.

Stage 3 on a rank (`sampleattn.distributed.stage3`) attends over the keys it holds and over the
keys fetched from the others (`LocalMask.needed_keys`, less its own) in separate calls, each
exact attention under the mask over its keys with its log-sum-exp; `merge_by_lse` joins them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LocalMask", "merge_by_lse"]


@dataclass(frozen=True)
class LocalMask:
    """``Window ∪ Stripes ∪ Blocks`` of the plan, for this rank's rows.

    positions: (L,) int64 global row of each local row. window: (Hq,) int64.
    columns: (B, Hsel, n_seg, S) bool selected columns per segment of ``segment_rows`` rows.
    query_blocks: (n,) int64 the global query blocks of this rank's rows, and blocks:
    (B, Hsel, n, n_kblocks) bool the key blocks each chose (both None without key blocks).
    """

    positions: torch.Tensor
    window: torch.Tensor
    columns: torch.Tensor
    segment_rows: int
    q_per_sel: int
    query_blocks: torch.Tensor | None = None
    blocks: torch.Tensor | None = None
    block_rows: int = 0
    key_block: int = 0

    @classmethod
    def from_plan(cls, plan, positions: torch.Tensor, query_blocks=None, key_blocks=None) -> "LocalMask":
        """From a `SparsePlan` (window and columns) and this rank's `KeyBlocks` (their query-block
        axis over ``query_blocks``)."""
        device = positions.device
        columns = torch.zeros(*plan.col_idx.shape[:3], plan.seqlen_k + 1, dtype=torch.bool, device=device)
        columns.scatter_(3, plan.col_idx.to(device, torch.int64), True)
        blocks = None
        if key_blocks is not None:
            n_kb = -(-plan.seqlen_k // key_blocks.key_block)
            blocks = torch.zeros(*key_blocks.blk_idx.shape[:3], n_kb + 1, dtype=torch.bool, device=device)
            blocks.scatter_(3, key_blocks.blk_idx.to(device, torch.int64), True)
            blocks = blocks[..., :n_kb]
        return cls(positions=positions, window=plan.window.to(device, torch.int64), columns=columns[..., :-1],
                   segment_rows=plan.segment_rows, q_per_sel=plan.q_per_sel, query_blocks=query_blocks,
                   blocks=blocks, block_rows=key_blocks.block_rows if key_blocks is not None else 0,
                   key_block=key_blocks.key_block if key_blocks is not None else 0)

    def needed_keys(self, nheads_kv: int, seqlen: int) -> torch.Tensor:
        """(B, Hkv, S) bool: the keys some local row keeps, per KV head (window bands, the selected
        columns and key blocks left of the last local row)."""
        device = self.positions.device
        batch, n_sel = self.columns.shape[:2]
        q_per_kv = self.window.numel() // nheads_kv
        kv_of_sel = torch.arange(n_sel, device=device) * self.q_per_sel // q_per_kv
        # window bands: a difference array over [p - w + 1, p] for every local row
        w_max = self.window.view(nheads_kv, q_per_kv).max(dim=1).values
        cover = torch.zeros(nheads_kv, seqlen + 1, device=device)
        starts = (self.positions.view(1, -1) - w_max.view(-1, 1) + 1).clamp(min=0)
        cover.scatter_add_(1, starts, torch.ones_like(starts, dtype=cover.dtype))
        ends = (self.positions + 1).view(1, -1).expand(nheads_kv, -1)
        cover.scatter_add_(1, ends, -torch.ones_like(ends, dtype=cover.dtype))
        need = (torch.cumsum(cover, dim=1)[:, :seqlen] > 0).unsqueeze(0).expand(batch, -1, -1).clone()
        segments = torch.unique(torch.div(self.positions, self.segment_rows, rounding_mode="floor"))
        per_sel = self.columns[:, :, segments].any(dim=2).to(torch.float32)
        if self.blocks is not None:
            chosen = self.blocks.any(dim=2).repeat_interleave(self.key_block, dim=2)[..., :seqlen]
            per_sel = per_sel + chosen.to(torch.float32)
        by_kv = torch.zeros(batch, nheads_kv, seqlen, device=device).index_add_(1, kv_of_sel, per_sel)
        need |= by_kv > 0
        need &= torch.arange(seqlen, device=device).view(1, 1, -1) <= self.positions.max()
        return need


def merge_by_lse(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                 lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over two disjoint key sets merged: out (B, L, Hq, D), lse (B, Hq, L)."""
    lse = torch.logaddexp(lse_a, lse_b)
    empty = lse == float("-inf")
    weight_a = torch.where(empty, 0.0, torch.exp(lse_a - lse)).transpose(1, 2).unsqueeze(-1)
    weight_b = torch.where(empty, 0.0, torch.exp(lse_b - lse)).transpose(1, 2).unsqueeze(-1)
    return out_a * weight_a + out_b * weight_b, lse
