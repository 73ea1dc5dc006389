"""Fixed-pattern and oracle baselines, called like `sampleattn.SampleAttention`.

Every baseline is an attention operator ``op(q, k, v, *, layer, scale=None, return_plan=False)``
with q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) (bottom-right causal), so it plugs into
`sampleattn.integrations.transformers.patch_model` exactly where SampleAttention does. Each is
given a **target density** (computed pairs / visible pairs; one float, or one per layer) and
solves its own parameters on each call so that its density matches the target (to within one
key of window, or one column per segment): the evaluation matches them to the density that
SampleAttention measured on the same input and layer.

Through the plan and kernel machinery (a hand-built `SparsePlan`, then `sparse_attention`):

* `WindowBaseline`: a local window only.
* `StreamingLLMBaseline`: ``n_sink`` attention-sink columns (the first keys) plus a local window
  (Xiao et al., 2023).
* `BigBirdBaseline`: a local window, global columns (the first keys) and random key blocks,
  drawn anew for each segment of 64 query rows (Zaheer et al., 2020), in BigBird's block
  proportions 3 : 2 : 3 (window : global : random). Causal, so the global *rows* of BigBird (global
  tokens attending to everything) are left out: in a decoder they would see the future.

Through a dense mask in the plain-PyTorch reference (the plan format has no diagonals; fine up to
about 8K tokens, (B, Hq / Hkv, Sq, Sk) at a time):

* `VerticalSlashBaseline`: MInference-style vertical-and-slash: the last ``last_q`` queries score
  every key column (vertical) and every diagonal offset (slash); the top columns and diagonals
  are kept, the first ``force_sinks`` columns and the ``force_local`` nearest diagonals always
  (MInference's 30 and 100), vertical and slash budgets equal.
* `OracleBaseline`: the unstructured best: each query row keeps its own fewest keys reaching
  ``alpha`` of its true attention mass. Not density-matched: its density is what alpha gives.

The ``return_plan`` object of a dense-mask baseline is a `MaskReport` (``density`` (B, Hq)),
which is all the integration's records read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import torch

from sampleattn.kernels.tiles import SMALL_BLOCK

from .attention import Backend, resolve_backend, sparse_attention
from .planning import SparsePlan
from .selection import density_per_head
from .validation import check_qkv, default_scale

__all__ = [
    "BigBirdBaseline",
    "MaskReport",
    "OracleBaseline",
    "StreamingLLMBaseline",
    "VerticalSlashBaseline",
    "WindowBaseline",
    "build_plan",
    "visible_pairs",
]

TargetDensity = float | Mapping[int, float]


def visible_pairs(seqlen_q: int, seqlen_k: int) -> float:
    """Number of (row, key) pairs visible under bottom-right causal alignment."""
    offset = seqlen_k - seqlen_q
    return seqlen_q * (offset + 1) + seqlen_q * (seqlen_q - 1) / 2.0


@dataclass(frozen=True)
class MaskReport:
    """What a dense-mask baseline reports: density (B, Hq) fp32 (computed / visible pairs)."""

    density: torch.Tensor

    @property
    def mean_density(self) -> float:
        return float(self.density.mean())


def build_plan(
    *,
    batch: int,
    seqlen_q: int,
    seqlen_k: int,
    nheads_q: int,
    nheads_kv: int,
    window: int | torch.Tensor,
    columns: torch.Tensor | None,
    col_count: torch.Tensor | None = None,
    segment_rows: int | None = None,
    scale: float,
    device: torch.device | str = "cpu",
    block_m: int = SMALL_BLOCK,
) -> SparsePlan:
    """A `SparsePlan` from a window and explicit column lists (one set per query head).

    Args:
        window: one width for all heads, or (Hq,) ints.
        columns: (B or 1, Hq, n_seg, kmax) int key indices, ascending within the first
            ``col_count`` entries of each row, then padded with ``seqlen_k``; None for no columns.
        col_count: (B or 1, Hq, n_seg) valid entries; default: the entries below ``seqlen_k``.
        segment_rows: rows per segment (a multiple of ``block_m``); default one segment.
    Returns:
        The plan (retained mass is not measured for hand-built plans: reported as 1).
    """
    segment_rows = segment_rows or -(-seqlen_q // block_m) * block_m
    if segment_rows % block_m:
        raise ValueError(f"segment_rows={segment_rows} must be a multiple of block_m={block_m}")
    n_seg = -(-seqlen_q // segment_rows)
    if columns is None:
        columns = torch.full((1, nheads_q, n_seg, 1), seqlen_k, dtype=torch.int32, device=device)
    columns = columns.to(device, torch.int32)
    if columns.shape[1:3] != (nheads_q, n_seg):
        raise ValueError(f"columns has shape {tuple(columns.shape)}; expected (B, {nheads_q}, {n_seg}, kmax)")
    columns = columns.expand(batch, -1, -1, -1).contiguous()
    if col_count is None:
        col_count = (columns < seqlen_k).sum(-1)
    col_count = col_count.to(device, torch.int32).expand(batch, -1, -1).contiguous()
    if isinstance(window, torch.Tensor):
        window_t = window.to(device, torch.int32)
    else:
        window_t = torch.full((nheads_q,), int(window), dtype=torch.int32, device=device)
    density = density_per_head(columns, col_count, window_t, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                               segment_rows=segment_rows, q_per_sel=1)
    ones = torch.ones(batch, nheads_q, device=device)
    return SparsePlan(
        batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads_q=nheads_q, nheads_kv=nheads_kv,
        gqa_granularity="query_head", segment_rows=segment_rows, scale=scale, window=window_t,
        col_idx=columns, col_count=col_count, retained_mean=ones, retained_min=ones, density=density,
        sampled_rows=torch.zeros(0, dtype=torch.int64, device=device),
    )


def _target_for(target: TargetDensity, layer: int) -> float:
    if isinstance(target, Mapping):
        if layer not in target:
            raise ValueError(f"no target density for layer {layer}; the targets cover layers {sorted(target)}")
        value = float(target[layer])
    else:
        value = float(target)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"target density {value} must be in (0, 1]")
    return value


def _bisect(density_of, target: float, lo: float, hi: float, *, integer: bool, iters: int = 40) -> float:
    """Smallest parameter in [lo, hi] whose (non-decreasing) density reaches ``target``."""
    if density_of(hi) <= target:
        return hi
    for _ in range(iters):
        if integer and hi - lo <= 1:
            break
        mid = (lo + hi) / 2.0
        if integer:
            mid = math.floor(mid)
        if density_of(mid) >= target:
            hi = mid
        else:
            lo = mid
    # return whichever side is closer to the target
    return lo if abs(density_of(lo) - target) < abs(density_of(hi) - target) else hi


class _PlanBaseline(ABC):
    """Shared call path of the plan-based baselines."""

    name = "plan"

    def __init__(self, target_density: TargetDensity, *, backend: Backend = "auto", block_m: int = SMALL_BLOCK,
                 seed: int = 0) -> None:
        self.target_density = target_density
        self.backend: Backend = backend
        self.block_m = block_m
        self.seed = seed

    @abstractmethod
    def make_plan(self, q: torch.Tensor, k: torch.Tensor, *, layer: int, scale: float) -> SparsePlan:
        """The baseline's plan for one call (each subclass's own rule)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int = 0,
                 scale: float | None = None, return_plan: bool = False):
        """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, Hq, D) (and the plan)."""
        check_qkv(q, k, v)
        scale = default_scale(q, scale)
        plan = self.make_plan(q, k, layer=layer, scale=scale)
        out = sparse_attention(q, k, v, plan, backend=self.backend)  # the launcher picks the tile
        return (out, plan) if return_plan else out

    def _geometry(self, q: torch.Tensor, k: torch.Tensor) -> dict:
        return dict(batch=q.shape[0], seqlen_q=q.shape[1], seqlen_k=k.shape[1], nheads_q=q.shape[2],
                    nheads_kv=k.shape[2], device=q.device, block_m=self.block_m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_density={self.target_density!r})"


def _window_density(seqlen_q: int, seqlen_k: int, window: int, sinks: int = 0) -> float:
    """Closed-form density of Window(w) plus the first ``sinks`` columns."""
    cols = torch.arange(sinks, dtype=torch.int32).view(1, 1, 1, -1) if sinks else torch.full(
        (1, 1, 1, 1), seqlen_k, dtype=torch.int32)
    count = torch.tensor([[[sinks]]], dtype=torch.int32)
    w = torch.tensor([window], dtype=torch.int32)
    return float(density_per_head(cols, count, w, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                                  segment_rows=seqlen_q, q_per_sel=1)[0, 0])


class WindowBaseline(_PlanBaseline):
    """A local window of width w, solved so that the density matches the target."""

    name = "window"

    def window_for(self, seqlen_q: int, seqlen_k: int, target: float, sinks: int = 0) -> int:
        return int(_bisect(lambda w: _window_density(seqlen_q, seqlen_k, int(w), sinks), target,
                           1, seqlen_k, integer=True))

    def make_plan(self, q, k, *, layer, scale):
        g = self._geometry(q, k)
        w = self.window_for(g["seqlen_q"], g["seqlen_k"], _target_for(self.target_density, layer))
        return build_plan(**g, window=w, columns=None, scale=scale)


class StreamingLLMBaseline(WindowBaseline):
    """``n_sink`` sink columns (keys 0..n_sink-1) plus a local window (StreamingLLM)."""

    name = "streamingllm"

    def __init__(self, target_density: TargetDensity, *, n_sink: int = 4, **kwargs) -> None:
        super().__init__(target_density, **kwargs)
        self.n_sink = n_sink

    def make_plan(self, q, k, *, layer, scale):
        g = self._geometry(q, k)
        sinks = min(self.n_sink, g["seqlen_k"])
        w = self.window_for(g["seqlen_q"], g["seqlen_k"], _target_for(self.target_density, layer), sinks)
        n_seg = 1
        cols = torch.arange(sinks, dtype=torch.int32).view(1, 1, n_seg, -1).expand(1, g["nheads_q"], n_seg, -1)
        return build_plan(**g, window=w, columns=cols, scale=scale)


class BigBirdBaseline(_PlanBaseline):
    """Window + global columns + random key blocks per 64-row segment, in proportions 3 : 2 : 3.

    A budget of ``K`` keys per row splits into a window of ``3K/8``, ``2K/8`` global columns (the
    first keys) and ``3K/8`` random keys in blocks of ``random_block`` keys, drawn per (layer, head,
    segment) from the keys left of the segment's window; ``K`` is solved for the target density.
    """

    name = "bigbird"

    def __init__(self, target_density: TargetDensity, *, segment_rows: int = 64, random_block: int = 16,
                 **kwargs) -> None:
        super().__init__(target_density, **kwargs)
        self.segment_rows = segment_rows
        self.random_block = random_block

    def _columns(self, budget: float, *, seqlen_q, seqlen_k, nheads_q, layer, device):
        """Window width and (1, Hq, n_seg, kmax) columns for a budget of ``budget`` keys per row."""
        n_seg = -(-seqlen_q // self.segment_rows)
        window = max(1, math.ceil(budget * 3 / 8))
        n_global = min(seqlen_k, int(round(budget * 2 / 8)))
        n_random = int(round(budget * 3 / 8 / self.random_block))
        blk = self.random_block
        n_blocks = -(-seqlen_k // blk)
        # one fixed random priority per (head, segment, key block), drawn once per layer
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + layer)
        priority = torch.rand(nheads_q, n_seg, n_blocks, generator=gen).to(device)
        offset = seqlen_k - seqlen_q
        seg = torch.arange(n_seg, device=device)
        last = torch.clamp((seg + 1) * self.segment_rows, max=seqlen_q) - 1 + offset
        hi_block = torch.clamp((last - window + 1) // blk, min=0)  # blocks fully left of the window
        lo_block = -(-n_global // blk)
        b = torch.arange(n_blocks, device=device)
        eligible = (b.view(1, -1) >= lo_block) & (b.view(1, -1) < hi_block.view(-1, 1))  # (n_seg, n_blocks)
        member = torch.zeros(nheads_q, n_seg, seqlen_k, dtype=torch.bool, device=device)
        member[:, :, :n_global] = True
        if n_random > 0:
            ranked = torch.where(eligible.unsqueeze(0), priority, torch.full_like(priority, -1.0))
            top = ranked.topk(min(n_random, n_blocks), dim=-1)
            chosen = torch.zeros(nheads_q, n_seg, n_blocks, dtype=torch.bool, device=device)
            chosen.scatter_(2, top.indices, top.values >= 0)
            member |= chosen.repeat_interleave(blk, dim=2)[..., :seqlen_k]
        count = member.sum(-1)
        kmax = max(1, int(count.max()))
        j = torch.arange(seqlen_k, dtype=torch.int32, device=device)
        cols = torch.where(member, j, torch.full_like(j, seqlen_k)).sort(dim=-1).values[..., :kmax]
        return window, cols.unsqueeze(0).contiguous()

    def _density(self, budget: float, **geo) -> float:
        window, cols = self._columns(budget, **geo)
        count = (cols < geo["seqlen_k"]).sum(-1)
        w = torch.full((geo["nheads_q"],), window, dtype=torch.int32, device=cols.device)
        return float(density_per_head(cols, count, w, seqlen_q=geo["seqlen_q"], seqlen_k=geo["seqlen_k"],
                                      segment_rows=self.segment_rows, q_per_sel=1).mean())

    def make_plan(self, q, k, *, layer, scale):
        g = self._geometry(q, k)
        geo = dict(seqlen_q=g["seqlen_q"], seqlen_k=g["seqlen_k"], nheads_q=g["nheads_q"], layer=layer,
                   device=q.device)
        target = _target_for(self.target_density, layer)
        budget = _bisect(lambda b: self._density(b, **geo), target, 1.0, float(g["seqlen_k"]) * 8 / 3,
                         integer=False, iters=16)
        _, cols = self._columns(budget, **geo)
        # the random blocks come in steps of ``random_block`` keys: fine-tune the window
        count = (cols < g["seqlen_k"]).sum(-1)

        def density(w: float) -> float:
            wt = torch.full((g["nheads_q"],), int(w), dtype=torch.int32, device=cols.device)
            return float(density_per_head(cols, count, wt, seqlen_q=g["seqlen_q"], seqlen_k=g["seqlen_k"],
                                          segment_rows=self.segment_rows, q_per_sel=1).mean())

        window = int(_bisect(density, target, 1, g["seqlen_k"], integer=True))
        return build_plan(**g, window=window, columns=cols, segment_rows=self.segment_rows, scale=scale)


# --------------------------------------------------------------------------------------------
# Dense-mask baselines (reference path)
# --------------------------------------------------------------------------------------------


def _group_scores(q: torch.Tensor, k: torch.Tensor, kv: int, scale: float) -> torch.Tensor:
    """(B, g, Sq, Sk) fp32 causal-masked scores of the query heads of KV head ``kv``."""
    group = q.shape[2] // k.shape[2]
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    qh = q[:, :, kv * group:(kv + 1) * group].transpose(1, 2).float()
    s = torch.matmul(qh, k[:, :, kv].float().transpose(-1, -2).unsqueeze(1)) * scale
    i = torch.arange(seqlen_q, device=q.device).view(-1, 1) + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=q.device).view(1, -1)
    return s.masked_fill(j > i, float("-inf"))


class _MaskBaseline(ABC):
    """Dense attention under a per-head boolean mask, one KV group at a time."""

    name = "mask"

    def __init__(self, target_density: TargetDensity | None = None) -> None:
        self.target_density = target_density

    @abstractmethod
    def group_mask(self, s: torch.Tensor, p: torch.Tensor, *, layer: int, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        """(B, g, Sq, Sk) bool kept pairs from scores ``s`` and full probabilities ``p``."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layer: int = 0,
                 scale: float | None = None, return_plan: bool = False):
        """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, Hq, D) (and a `MaskReport`)."""
        check_qkv(q, k, v)
        scale = default_scale(q, scale)
        batch, seqlen_q, nheads_q, head_dim = q.shape
        seqlen_k, nheads_kv = k.shape[1], k.shape[2]
        group = nheads_q // nheads_kv
        out = torch.empty(batch, nheads_q, seqlen_q, v.shape[-1], device=q.device, dtype=torch.float32)
        density = torch.empty(batch, nheads_q, device=q.device)
        visible = visible_pairs(seqlen_q, seqlen_k)
        for kv in range(nheads_kv):
            heads = slice(kv * group, (kv + 1) * group)
            s = _group_scores(q, k, kv, scale)
            p = torch.softmax(s, dim=-1)
            keep = self.group_mask(s, p, layer=layer, seqlen_q=seqlen_q, seqlen_k=seqlen_k) & torch.isfinite(s)
            density[:, heads] = keep.sum(dim=(-1, -2)).float() / visible
            del p
            s = s.masked_fill(~keep, float("-inf"))
            ps = torch.softmax(s, dim=-1).nan_to_num(0.0)
            out[:, heads] = torch.matmul(ps, v[:, :, kv].float().unsqueeze(1))
            del s, ps, keep
        out = out.transpose(1, 2).to(q.dtype)
        return (out, MaskReport(density)) if return_plan else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_density={self.target_density!r})"


class VerticalSlashBaseline(_MaskBaseline):
    """MInference-style vertical + slash pattern estimated from the last ``last_q`` queries.

    With ``n`` the per-head budget (``n`` columns and ``n`` diagonals), solved for the target
    density: the columns with the highest attention from the last queries, and the diagonal
    offsets (``p_i - j``) with the highest summed attention, always including the first
    ``force_sinks`` columns and the ``force_local`` nearest diagonals.
    """

    name = "vertical_slash"

    def __init__(self, target_density: TargetDensity, *, last_q: int = 64, force_sinks: int = 30,
                 force_local: int = 100) -> None:
        super().__init__(target_density)
        self.last_q = last_q
        self.force_sinks = force_sinks
        self.force_local = force_local

    def _scores(self, p: torch.Tensor, seqlen_q: int, seqlen_k: int):
        """Vertical (B, g, Sk) and slash (B, g, Sk) scores (slash indexed by offset p_i - j)."""
        last = min(self.last_q, seqlen_q)
        tail = p[:, :, -last:, :]  # (B, g, last, Sk)
        vertical = tail.sum(dim=2)
        pos = torch.arange(seqlen_q - last, seqlen_q, device=p.device) + (seqlen_k - seqlen_q)
        j = torch.arange(seqlen_k, device=p.device)
        offset = (pos.view(-1, 1) - j.view(1, -1)).clamp(min=0)  # (last, Sk); masked entries have p = 0
        slash = torch.zeros(p.shape[0], p.shape[1], seqlen_k, device=p.device)
        slash.scatter_add_(2, offset.view(1, 1, -1).expand(p.shape[0], p.shape[1], -1).contiguous(),
                           tail.reshape(p.shape[0], p.shape[1], -1))
        # forced entries first, in order: the first columns, the nearest diagonals
        big = 1e9
        fs, fl = min(self.force_sinks, seqlen_k), min(self.force_local, seqlen_k)
        vertical[..., :fs] = big - torch.arange(fs, device=p.device, dtype=vertical.dtype)
        slash[..., :fl] = big - torch.arange(fl, device=p.device, dtype=slash.dtype)
        return vertical, slash

    @staticmethod
    def _keeps(vertical, slash, n: int):
        """(B, g, Sk) bool kept columns and kept diagonal offsets for a budget of n each."""
        seqlen_k = vertical.shape[-1]
        n = max(1, min(int(n), seqlen_k))
        col_keep = torch.zeros_like(vertical, dtype=torch.bool)
        col_keep.scatter_(2, vertical.topk(n, dim=-1).indices, True)
        off_keep = torch.zeros_like(slash, dtype=torch.bool)
        off_keep.scatter_(2, slash.topk(n, dim=-1).indices, True)
        return col_keep, off_keep

    @staticmethod
    def _kept_pairs(col_keep, off_keep, seqlen_q: int) -> torch.Tensor:
        """(B, g) kept causal pairs, without the mask: for the row at position p,
        |columns <= p| + |offsets <= p| - |{j <= p: column j and offset p - j both kept}|,
        the last term a causal convolution (by FFT)."""
        seqlen_k = col_keep.shape[-1]
        c, o = col_keep.double(), off_keep.double()
        size = 2 * seqlen_k
        both = torch.fft.irfft(torch.fft.rfft(c, size) * torch.fft.rfft(o, size), size)[..., :seqlen_k].round()
        per_pos = c.cumsum(-1) + o.cumsum(-1) - both
        return per_pos[..., seqlen_k - seqlen_q:].sum(-1)

    def _mask(self, vertical, slash, n: int, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
        col_keep, off_keep = self._keeps(vertical, slash, n)
        pos = torch.arange(seqlen_q, device=vertical.device) + (seqlen_k - seqlen_q)
        j = torch.arange(seqlen_k, device=vertical.device)
        offset = pos.view(-1, 1) - j.view(1, -1)
        causal = offset >= 0
        diag = off_keep[:, :, offset.clamp(min=0)]  # (B, g, Sq, Sk)
        return (diag | col_keep.unsqueeze(2)) & causal

    def group_mask(self, s, p, *, layer, seqlen_q, seqlen_k):
        target = _target_for(self.target_density, layer)
        vertical, slash = self._scores(p, seqlen_q, seqlen_k)
        visible = visible_pairs(seqlen_q, seqlen_k)

        def density(n: float) -> float:
            col_keep, off_keep = self._keeps(vertical, slash, int(n))
            return float(self._kept_pairs(col_keep, off_keep, seqlen_q).mean()) / visible

        n = _bisect(density, target, 1, seqlen_k, integer=True)
        return self._mask(vertical, slash, int(n), seqlen_q, seqlen_k)


class OracleBaseline(_MaskBaseline):
    """Per row, the fewest keys (by true attention probability) reaching ``alpha`` of its mass."""

    name = "oracle"

    def __init__(self, alpha: float = 0.95) -> None:
        super().__init__(None)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in (0, 1]")
        self.alpha = alpha

    def group_mask(self, s, p, *, layer, seqlen_q, seqlen_k):
        ordered, order = torch.sort(p, dim=-1, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the keys ranked above
        keep_sorted = before < self.alpha
        keep = torch.zeros_like(keep_sorted)
        keep.scatter_(-1, order, keep_sorted)
        return keep

    def __repr__(self) -> str:
        return f"OracleBaseline(alpha={self.alpha})"


def uses_kernels(op: object, t: torch.Tensor) -> bool:
    """Whether ``op`` would run the Triton kernels on ``t``'s device (plan baselines only)."""
    return isinstance(op, _PlanBaseline) and resolve_backend(t, op.backend) == "triton"
