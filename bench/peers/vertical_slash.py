"""MInference's vertical-slash sparse attention (Jiang et al., 2024), reimplemented as a peer.

Estimate (per query head, from the last ``last_q`` = 64 query rows): their exact softmax over
every visible key; the column sums ("verticals") and the sums along each diagonal offset
``delta = p_i - j`` ("slashes"); the top ``vertical_size`` columns and the top ``slash_size``
offsets, the first ``sink_columns`` = 30 columns and the ``local_diagonals`` = 100 nearest
offsets always kept (MInference's forward as released sets those scores to infinity).

Attention (`vertical_slash_fwd`): MInference's index conversion turns each selected offset
``delta`` into a key range per query block of ``block_m`` = 64 rows starting at position ``s``:
the keys ``[s - delta, s - delta + block_m)`` (every key that some row of the block sees at that
offset, computed for all rows of the block under the causal mask); the ranges of one block are
merged, and the selected columns outside them are gathered. The mask of row ``i`` (position
``p_i``, in the block that starts at ``s``) is therefore

    { j <= p_i : s - j in D }  ∪  { j <= p_i : j a selected column },
    D = ∪_{delta selected} [delta - block_m + 1, delta],

which `VerticalSlashPlan.mask_rows` expands and `reference.vertical_slash_mask_ref` builds from
scratch. Because D does not depend on the block, its runs are cut into key tiles once per head.

Differences from the released code, all deliberate: ``seqlen_q < seqlen_k`` (chunked prefill) is
supported through bottom-right positions; the budgets' floors are the forced entries
(``sink_columns`` columns, ``local_diagonals`` offsets; MInference's floor of 50 offsets, below
its 100 forced ones, could leave the choice among forced offsets to ties); merged ranges are cut exactly at their ends (MInference rounds each run up to whole
64-key steps and shifts ranges that start before key 0 to start at 0, computing a few more keys).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ._params import resolve_params
from ._scores import diagonal_sums, last_rows_softmax
from ._stages import plan_then_attend
from .kernels import vertical_slash_fwd

__all__ = ["DEFAULTS", "PRESETS", "VerticalSlashPlan", "vertical_slash_attention", "vertical_slash_estimate",
           "vertical_slash_params", "vertical_slash_plan", "vertical_slash_sparse"]

#: MInference's released defaults: the budget of a head without a searched pattern (1000 columns,
#: 6096 diagonals), 64 estimating rows, 30 forced sink columns, 100 forced local diagonals, 64-row
#: query blocks and 64-key tiles.
DEFAULTS = dict(vertical_size=1000, slash_size=6096, last_q=64, sink_columns=30, local_diagonals=100,
                block_m=64, block_n=64)

#: Named budget presets. "released" is DEFAULTS; the larger ones scale both budgets as
#: MInference's ``minference_ratio`` option does.
PRESETS = {
    "released": {},
    "budget-x2": dict(vertical_size=2000, slash_size=12192),
    "budget-x4": dict(vertical_size=4000, slash_size=24384),
}


def vertical_slash_params(preset: str | None = None, **overrides) -> dict:
    """DEFAULTS, then the preset's values, then ``overrides``; unknown names are refused."""
    params = resolve_params("vertical-slash", DEFAULTS, PRESETS, preset, "released", overrides)
    if params["local_diagonals"] < 1 or params["last_q"] < 1:
        raise ValueError("local_diagonals and last_q must be at least 1: the main diagonal is always kept")
    if params["block_n"] < 16 or params["block_m"] < 16:
        raise ValueError("block_m and block_n must be at least 16 (Triton's smallest dot)")
    return params


def vertical_slash_estimate(
    q: torch.Tensor, k: torch.Tensor, *, vertical_size: int, slash_size: int, last_q: int, sink_columns: int,
    local_diagonals: int, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected columns and diagonal offsets of each query head.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D).
    Returns:
        cols: (B, Hq, nv) int32 ascending, ``nv = min(Sk, max(vertical_size, sink_columns))``;
        offsets: (B, Hq, ns) int32 ascending, ``ns = min(Sk, max(slash_size, local_diagonals))``.
    """
    seqlen_q, seqlen_k, head_dim = q.shape[1], k.shape[1], q.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    p = last_rows_softmax(q, k, min(last_q, seqlen_q), scale)
    vertical = p.sum(dim=2)
    slash = diagonal_sums(p)
    del p
    vertical[..., :sink_columns] = float("inf")
    slash[..., :local_diagonals] = float("inf")
    nv = min(seqlen_k, max(vertical_size, sink_columns))
    ns = min(seqlen_k, max(slash_size, local_diagonals))
    cols = vertical.topk(nv, dim=-1).indices.sort(dim=-1).values.to(torch.int32)
    offsets = slash.topk(ns, dim=-1).indices.sort(dim=-1).values.to(torch.int32)
    return cols, offsets


@dataclasses.dataclass(frozen=True)
class VerticalSlashPlan:
    """The selection and its kernel layout (see `vertical_slash_attention_kernel`).

    Attributes:
        cols: (B, Hq, nv) int32 ascending selected columns; offsets: (B, Hq, ns) int32 ascending
            selected diagonal offsets.
        cover: (B, Hq, Sk + block_m) int8, 1 at ``d + block_m - 1`` for each distance d in D.
        tile_off, tile_len: (B, Hq, max_tiles) int32; tile_count: (B, Hq) int32; tile_first,
            col_end: (B, Hq, n_mblocks) int32.
    """

    seqlen_q: int
    seqlen_k: int
    block_m: int
    block_n: int
    cols: torch.Tensor
    offsets: torch.Tensor
    cover: torch.Tensor
    tile_off: torch.Tensor
    tile_len: torch.Tensor
    tile_count: torch.Tensor
    tile_first: torch.Tensor
    col_end: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cols.shape[:2])

    def block_starts(self) -> torch.Tensor:
        """(n_mblocks,) int64: the position of each query block's first row."""
        n_mb = self.tile_first.shape[-1]
        return torch.arange(n_mb, device=self.cols.device) * self.block_m + (self.seqlen_k - self.seqlen_q)

    def mask_rows(self, rows: torch.Tensor, heads: slice = slice(None)) -> torch.Tensor:
        """The mask of some query rows: (B, len(heads), len(rows), Sk) bool, read from the cover
        and the columns as the kernel reads them."""
        device = self.cols.device
        rows = rows.to(device, torch.int64)
        pos = (self.seqlen_k - self.seqlen_q + rows).view(-1, 1)
        start = self.block_starts()[rows // self.block_m].view(-1, 1)
        j = torch.arange(self.seqlen_k, device=device).view(1, -1)
        causal = j <= pos
        at = (start - j + self.block_m - 1).clamp(0, self.cover.shape[-1] - 1)  # (n, Sk)
        cover = self.cover[:, heads].bool()
        in_range = cover[:, :, at.view(-1)].view(*cover.shape[:2], *at.shape) & (j <= start + self.block_m - 1)
        cols = self.cols[:, heads].to(torch.int64)
        member = torch.zeros(*cols.shape[:2], self.seqlen_k, dtype=torch.bool, device=device)
        member.scatter_(2, cols, True)
        return (in_range | member.unsqueeze(2)) & causal

    def to_dense(self) -> torch.Tensor:
        """(B, Hq, Sq, Sk) bool: the whole mask (small inputs only)."""
        return self.mask_rows(torch.arange(self.seqlen_q))

    def density(self) -> float:
        """Pairs in the mask / visible causal pairs, over every row and head, without the mask:
        per row the covered distances by a prefix sum of the cover, per block the columns
        before the block that no range of it covers (the columns at or after its start are all
        covered: the main diagonal's range is [s, s + block_m))."""
        batch, nheads = self.shape
        device = self.cols.device
        starts = self.block_starts()  # (n_mb,)
        rows = torch.arange(self.seqlen_q, device=device)
        pos = self.seqlen_k - self.seqlen_q + rows
        start_of_row = starts[rows // self.block_m]
        prefix = torch.nn.functional.pad(self.cover.to(torch.int64).cumsum(-1), (1, 0))  # (B, H, L + 1)
        hi = (start_of_row + self.block_m).view(1, 1, -1).expand(batch, nheads, -1)
        lo = (start_of_row - pos + self.block_m - 1).view(1, 1, -1).expand(batch, nheads, -1)
        in_ranges = (prefix.gather(2, hi) - prefix.gather(2, lo)).sum()
        rows_in_block = torch.bincount(rows // self.block_m, minlength=len(starts))
        outside = torch.zeros((), dtype=torch.int64, device=device)
        for h in range(nheads):  # (B, n_mb, nv) at a time
            cols = self.cols[:, h].to(torch.int64).unsqueeze(1)  # (B, 1, nv)
            at = (starts.view(1, -1, 1) - cols + self.block_m - 1).clamp(0, self.cover.shape[-1] - 1)
            free = (cols < starts.view(1, -1, 1)) & (self.cover[:, h].gather(1, at.view(batch, -1)).view(at.shape) == 0)
            outside += (free.sum(-1) * rows_in_block.view(1, -1)).sum()
        visible = float((pos + 1).sum()) * batch * nheads
        return float(in_ranges + outside) / visible


def _layout(cols: torch.Tensor, offsets: torch.Tensor, *, seqlen_q: int, seqlen_k: int, block_m: int,
            block_n: int) -> dict[str, torch.Tensor]:
    """Cover, tiles and per-block counts of a selection (see `VerticalSlashPlan`)."""
    batch, nheads, _ = offsets.shape
    device = offsets.device
    n_rows = batch * nheads
    length = seqlen_k + block_m
    # D's indicator by a difference array: offset delta covers x = d + block_m - 1 in [delta, delta + block_m).
    diff = torch.zeros(n_rows, length + 1, dtype=torch.int32, device=device)
    flat = offsets.reshape(n_rows, -1).to(torch.int64)
    diff.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.int32))
    diff.scatter_add_(1, flat + block_m, torch.full_like(flat, -1, dtype=torch.int32))
    cover = diff.cumsum(1)[:, :length] > 0
    # Runs of D: [a, z] in x. Keys ascend as x descends, so the runs are walked from the last.
    edge = torch.nn.functional.pad(cover, (1, 1))
    run_row, run_a = torch.nonzero(edge[:, 1:-1] & ~edge[:, :-2], as_tuple=True)
    _, run_z = torch.nonzero(edge[:, 1:-1] & ~edge[:, 2:], as_tuple=True)
    run_len = run_z - run_a + 1
    tiles_per_run = (run_len + block_n - 1) // block_n
    tile_run = torch.repeat_interleave(torch.arange(len(run_a), device=device), tiles_per_run)
    first_of_run = torch.cumsum(tiles_per_run, 0) - tiles_per_run
    t = torch.arange(len(tile_run), device=device) - first_of_run[tile_run]
    tile_row = run_row[tile_run]
    # Tile t of run [a, z] holds keys s - (z - block_m + 1) + t * block_n, ...: its offset from s.
    off = run_z[tile_run] - block_m + 1 - t * block_n
    size = torch.clamp(run_len[tile_run] - t * block_n, max=block_n)
    order = torch.argsort(tile_row * (2 * length + 2 * block_m) + (length + block_m - off))
    tile_row, off, size = tile_row[order], off[order], size[order]
    tile_count = torch.bincount(tile_row, minlength=n_rows)
    max_tiles = max(int(tile_count.max()), 1)
    slot = torch.arange(len(tile_row), device=device) - (torch.cumsum(tile_count, 0) - tile_count)[tile_row]
    tile_off = torch.zeros(n_rows, max_tiles, dtype=torch.int32, device=device)
    tile_len = torch.zeros(n_rows, max_tiles, dtype=torch.int32, device=device)
    tile_off[tile_row, slot] = off.to(torch.int32)
    tile_len[tile_row, slot] = size.to(torch.int32)
    # First tile of each block not wholly before key 0: tiles with off - len >= s lie before it;
    # len - off ascends along a head's tiles (padding: +inf).
    n_mb = -(-seqlen_q // block_m)
    starts = torch.arange(n_mb, device=device) * block_m + (seqlen_k - seqlen_q)
    keyed = (tile_len - tile_off).to(torch.int64)
    keyed[torch.arange(max_tiles, device=device).view(1, -1) >= tile_count.view(-1, 1)] = torch.iinfo(torch.int64).max
    tile_first = torch.searchsorted(keyed, (-starts).view(1, -1).expand(n_rows, -1).contiguous(), right=True)
    last_pos = torch.clamp(starts + block_m - 1, max=seqlen_k - 1)
    col_end = torch.searchsorted(cols.reshape(n_rows, -1).contiguous(),
                                 last_pos.view(1, -1).expand(n_rows, -1).to(cols.dtype).contiguous(), right=True)
    shape = (batch, nheads)
    return dict(cover=cover.to(torch.int8).view(*shape, length), tile_off=tile_off.view(*shape, max_tiles),
                tile_len=tile_len.view(*shape, max_tiles), tile_count=tile_count.to(torch.int32).view(shape),
                tile_first=tile_first.to(torch.int32).view(*shape, n_mb), col_end=col_end.to(torch.int32).view(*shape, n_mb))


def vertical_slash_plan(q: torch.Tensor, k: torch.Tensor, *, preset: str | None = None, scale: float | None = None,
                        **params) -> VerticalSlashPlan:
    """The estimate and its kernel layout: everything before the attention kernel."""
    params = vertical_slash_params(preset, **params)
    cols, offsets = vertical_slash_estimate(
        q, k, vertical_size=params["vertical_size"], slash_size=params["slash_size"], last_q=params["last_q"],
        sink_columns=params["sink_columns"], local_diagonals=params["local_diagonals"], scale=scale)
    layout = _layout(cols, offsets, seqlen_q=q.shape[1], seqlen_k=k.shape[1], block_m=params["block_m"],
                     block_n=params["block_n"])
    return VerticalSlashPlan(q.shape[1], k.shape[1], params["block_m"], params["block_n"], cols, offsets, **layout)


def vertical_slash_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: VerticalSlashPlan, *,
                          scale: float | None = None) -> torch.Tensor:
    """The attention kernel over a plan: (B, Sq, Hq, D) in q's dtype."""
    return vertical_slash_fwd(q, k, v, tile_off=plan.tile_off, tile_len=plan.tile_len, tile_count=plan.tile_count,
                              tile_first=plan.tile_first, cover=plan.cover, cols=plan.cols, col_end=plan.col_end,
                              block_m=plan.block_m, block_n=plan.block_n, scale=scale)


def vertical_slash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, preset: str | None = None,
                             scale: float | None = None, time_stages: bool = False, with_density: bool = True,
                             **params) -> tuple[torch.Tensor, dict]:
    """MInference's vertical-slash attention: estimate, then the sparse kernel.

    Args:
        q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D), Sq <= Sk (bottom-right causal), GQA by Hq // Hkv.
        preset: a name of `PRESETS` (None: "released"); ``params`` override single values of
            `DEFAULTS` (vertical_size, slash_size, last_q, sink_columns, local_diagonals,
            block_m, block_n).
        time_stages: synchronise around each stage and report ``estimate_ms``/``attention_ms``
            (wall clock after a device sync: one call, no repeats).
        with_density: compute ``info["density"]`` and the tile count (a few passes over the
            selection and a device sync; leave them out of timed calls).
    Returns:
        out (B, Sq, Hq, D) in q's dtype, and info: density (pairs in the mask / visible causal
        pairs), the parameters, the budgets actually used and the tiles per head.
    """
    params = vertical_slash_params(preset, **params)
    plan, out, times = plan_then_attend(q.device, lambda: vertical_slash_plan(q, k, scale=scale, **params),
                                        lambda p: vertical_slash_sparse(q, k, v, p, scale=scale),
                                        time_stages=time_stages)
    info: dict = {"peer": "vertical_slash", "preset": preset or "released", **params,
                  "vertical_used": plan.cols.shape[-1], "slash_used": plan.offsets.shape[-1], **times}
    if with_density:
        info.update(density=plan.density(), tiles_per_head_mean=float(plan.tile_count.float().mean()))
    return out, info
