"""FlexPrefill's context-aware block-sparse attention (Lai et al., ICLR 2025), reimplemented as a peer.

Per query head, from the last block of ``block_size`` = 128 query rows (their exact softmax over
every visible key):

1. Vertical-slash budgets: the fewest columns (and, apart, diagonal offsets) whose summed
   attention of those rows reaches ``gamma``, turned into blocks as FlexPrefill does (``count //
   block_size + 1``), clamped to [min_budget, max_budget] tokens' worth of blocks.
2. The pattern test: the attention of the mean of those rows against mean-pooled keys (one score
   per key block) against their true attention summed per key block; where the square-root
   Jensen-Shannon divergence of the two is below ``tau`` the head is *query-aware* (pooled
   scores are trustworthy there) and its vertical-slash budgets drop to ``min_budget``.
3. Vertical-slash blocks: the top key blocks by column mass (key block 0 always) for every query
   block, and the top block diagonals (``qb - kb``) by diagonal mass pooled over offsets
   ``delta // block_size`` (the main block diagonal always).
4. Query-aware heads add the block pairs of the pooled scores: every query block's mean query
   against every key block's mean key, a causal softmax per query block, then the pairs in
   descending score over the whole head until their sum reaches ``gamma * n_blocks``.

Attention: `block_sparse_fwd` over the union, causal inside the diagonal blocks.

Defaults as released: gamma 0.9, tau 0.1, block size 128, min_budget 1024 tokens, no max budget
(the example of ``flex_prefill_attention.py``; the README's examples take min_budget 512, the
repository's RULER and InfiniteBench scripts gamma 0.95 with min_budget 1024: presets
"min-budget512" and "gamma0.95"). As released, inputs of at most
``max(2 * block_size, min_budget rounded up to blocks)`` tokens run dense attention (here: the
block-sparse kernel over every causal block, ``info["dense"]`` True), and ``seqlen_q`` must equal
``seqlen_k``. Batches are supported (the released code takes batch 1); the diagonal pooling is by
offset ``delta // block_size``, which is the released pooling when the length is a multiple of the
block size.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ._params import resolve_params
from ._scores import diagonal_sums, last_rows_softmax
from ._stages import plan_then_attend
from .kernels import block_sparse_fwd

__all__ = ["DEFAULTS", "PRESETS", "BlockSparsePlan", "flexprefill_attention", "flexprefill_params",
           "flexprefill_plan", "flexprefill_sparse", "block_mask_layout"]

DEFAULTS = dict(gamma=0.9, tau=0.1, min_budget=1024, max_budget=None, block_size=128)

#: Named presets: the defaults, the README's smaller minimum budget, the evaluation scripts'
#: gamma, and a higher coverage target for the accuracy end.
PRESETS = {
    "default": {},
    "min-budget512": dict(min_budget=512),
    "gamma0.95": dict(gamma=0.95),
    "gamma0.99": dict(gamma=0.99),
}


def flexprefill_params(preset: str | None = None, **overrides) -> dict:
    """DEFAULTS, then the preset's values, then ``overrides``; unknown names are refused."""
    params = resolve_params("FlexPrefill", DEFAULTS, PRESETS, preset, "default", overrides)
    if params["block_size"] not in (16, 32, 64, 128):
        raise ValueError(f"block_size={params['block_size']}: FlexPrefill takes 16, 32, 64 or 128")
    if not 0.0 < params["gamma"] <= 1.0:
        raise ValueError(f"gamma={params['gamma']} must be in (0, 1]")
    return params


@dataclasses.dataclass(frozen=True)
class BlockSparsePlan:
    """Selected (query block, key block) pairs and their kernel layout.

    Attributes:
        block_mask: (B, Hq, nb, nb) bool, causal (no pair above the block diagonal).
        kv_idx: (B, Hq, nb, max_blocks) int32 ascending key blocks; kv_count: (B, Hq, nb) int32.
        query_aware: (B, Hq) bool, the heads that took the pooled-score path.
        dense: whether the input was short enough for dense attention (every causal block).
    """

    seqlen: int
    block_size: int
    block_mask: torch.Tensor
    kv_idx: torch.Tensor
    kv_count: torch.Tensor
    query_aware: torch.Tensor
    dense: bool

    def mask_rows(self, rows: torch.Tensor, heads: slice = slice(None)) -> torch.Tensor:
        """(B, len(heads), len(rows), S) bool: the pairs the kernel computes for those rows."""
        device = self.block_mask.device
        rows = rows.to(device, torch.int64)
        j = torch.arange(self.seqlen, device=device)
        blocks = self.block_mask[:, heads][:, :, rows // self.block_size]  # (B, h, n, nb)
        return blocks[..., j // self.block_size] & (j.view(1, -1) <= rows.view(-1, 1))

    def to_dense(self) -> torch.Tensor:
        return self.mask_rows(torch.arange(self.seqlen))

    def density(self) -> float:
        """Pairs computed / visible causal pairs (each selected block counts its causal pairs)."""
        pairs = _visible_block_pairs(self.seqlen, self.block_size, self.block_mask.device)
        batch, nheads = self.block_mask.shape[:2]
        kept = (self.block_mask.to(torch.float64) * pairs).sum()
        return float(kept) / (float(pairs.sum()) * batch * nheads)


def _visible_block_pairs(seqlen: int, block: int, device) -> torch.Tensor:
    """(nb, nb) float64: causal pairs of each (query block, key block), Sq = Sk = seqlen."""
    nb = -(-seqlen // block)
    start = torch.arange(nb, device=device) * block
    size = torch.clamp(seqlen - start, max=block).to(torch.float64)
    below = size.view(-1, 1) * size.view(1, -1)
    diag = size * (size + 1) / 2
    qb, kb = torch.arange(nb, device=device).view(-1, 1), torch.arange(nb, device=device).view(1, -1)
    return torch.where(kb < qb, below, torch.where(kb == qb, torch.diag(diag), torch.zeros_like(below)))


def block_mask_layout(block_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, nq, nk) bool -> kv_idx (B, H, nq, max_blocks) int32 ascending, kv_count (B, H, nq)."""
    kv_count = block_mask.sum(-1, dtype=torch.int32)
    width = max(int(kv_count.max()), 1)
    # Stable sort of "not selected": the selected blocks come first, in ascending order.
    order = torch.sort((~block_mask).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    return order.to(torch.int32).contiguous(), kv_count


def _cover_count(scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """How many of the largest entries (last dim) it takes to exceed ``gamma``, FlexPrefill's way:
    the entries whose running sum stays at or below gamma, plus one."""
    running = torch.cumsum(torch.sort(scores, dim=-1, descending=True).values, dim=-1)
    return (running <= gamma).sum(-1) + 1


def _sqrt_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Square root of the Jensen-Shannon divergence of distributions on the last dim (0 log 0 = 0)."""
    m = (p + q) / 2
    kl = lambda a: torch.where(a > 0, a * torch.log(a / m.clamp(min=1e-30)), torch.zeros_like(a)).sum(-1)
    return torch.sqrt((0.5 * kl(p) + 0.5 * kl(q)).clamp(min=0))


def _top_mask(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(.., n) bool: the ``counts[...]`` largest entries of each row of ``scores``."""
    n = scores.shape[-1]
    width = max(1, min(int(counts.max()), n))
    top = scores.topk(width, dim=-1).indices
    keep = torch.arange(width, device=scores.device) < counts.unsqueeze(-1)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, top, keep)


def _pool_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, S, H, D) -> (B, nb, H, D) fp32: the mean of each block of ``block`` rows (the last,
    shorter block over its own rows)."""
    batch, seqlen, heads, dim = x.shape
    nb = -(-seqlen // block)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, nb * block - seqlen))
    sums = padded.view(batch, nb, block, heads, dim).sum(2)
    sizes = torch.clamp(seqlen - torch.arange(nb, device=x.device) * block, max=block).to(torch.float32)
    return sums / sizes.view(1, -1, 1, 1)


def _pool_sum(x: torch.Tensor, block: int) -> torch.Tensor:
    """(.., S) -> (.., nb): sums over blocks of ``block`` entries."""
    seqlen = x.shape[-1]
    nb = -(-seqlen // block)
    return torch.nn.functional.pad(x, (0, nb * block - seqlen)).view(*x.shape[:-1], nb, block).sum(-1)


def flexprefill_plan(q: torch.Tensor, k: torch.Tensor, *, preset: str | None = None, scale: float | None = None,
                     **params) -> BlockSparsePlan:
    """FlexPrefill's selection: everything before the attention kernel. q (B, S, Hq, D), k (B, S, Hkv, D)."""
    params = flexprefill_params(preset, **params)
    batch, seqlen, nheads_q, head_dim = q.shape
    if k.shape[1] != seqlen:
        raise ValueError(f"FlexPrefill needs seqlen_q == seqlen_k (got {seqlen} and {k.shape[1]}): its "
                         "selection pools whole query blocks aligned with the key blocks; use it on full prefill")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block, gamma = params["block_size"], params["gamma"]
    nb = -(-seqlen // block)
    device = q.device
    qb = torch.arange(nb, device=device).view(-1, 1)
    kb = torch.arange(nb, device=device).view(1, -1)
    causal = kb <= qb
    min_blocks = -(-params["min_budget"] // block) if params["min_budget"] else 1
    max_blocks = nb if params["max_budget"] is None else min(nb, -(-params["max_budget"] // block))
    if seqlen <= max(2 * block, min_blocks * block):
        mask = causal.expand(batch, nheads_q, nb, nb).contiguous()
        return BlockSparsePlan(seqlen, block, mask, *block_mask_layout(mask),
                               torch.zeros(batch, nheads_q, dtype=torch.bool, device=device), dense=True)

    p = last_rows_softmax(q, k, block, scale)  # (B, Hq, block, S)
    vertical = p.mean(dim=2)
    slash = diagonal_sums(p) / block
    del p
    n_vertical = (_cover_count(vertical, gamma) // block + 1).clamp(min_blocks, max_blocks)
    n_slash = (_cover_count(slash, gamma) // block + 1).clamp(min_blocks, max_blocks)
    vertical_blocks = _pool_sum(vertical, block)  # (B, Hq, nb): the last rows' mass per key block
    slash_blocks = _pool_sum(slash, block)  # per block diagonal delta // block

    # The pattern test: pooled estimate of the last rows' block distribution against the true one.
    group = nheads_q // k.shape[2]
    mean_k = _pool_mean(k, block).repeat_interleave(group, dim=2)  # (B, nb, Hq, D)
    mean_last_q = q[:, seqlen - block:].float().mean(1) * scale  # (B, Hq, D)
    estimate = torch.softmax(torch.einsum("bhd,bnhd->bhn", mean_last_q, mean_k), dim=-1)
    query_aware = _sqrt_js(estimate, vertical_blocks) < params["tau"]
    n_vertical = torch.where(query_aware, min_blocks, n_vertical)
    n_slash = torch.where(query_aware, min_blocks, n_slash)

    vertical_blocks[..., 0] = float("inf")  # the first key block
    slash_blocks[..., 0] = float("inf")  # the main block diagonal
    keep_cols = _top_mask(vertical_blocks, n_vertical)  # (B, Hq, nb) key blocks
    keep_diag = _top_mask(slash_blocks, n_slash)  # (B, Hq, nb) block diagonals
    mask = keep_cols.unsqueeze(2) | keep_diag[..., (qb - kb).clamp(min=0)]
    mask &= causal

    if bool(query_aware.any()):
        mean_q = _pool_mean(q, block) * scale  # (B, nb, Hq, D)
        scores = torch.einsum("bqhd,bkhd->bhqk", mean_q, mean_k).masked_fill(~causal, float("-inf"))
        prob = torch.softmax(scores, dim=-1).view(batch, nheads_q, nb * nb)
        ranked, order = torch.sort(prob, dim=-1, descending=True)
        take = torch.cumsum(ranked, dim=-1) <= gamma * nb
        pooled = torch.zeros_like(take).scatter_(-1, order, take).view(batch, nheads_q, nb, nb)
        mask |= pooled & query_aware.view(batch, nheads_q, 1, 1)
    return BlockSparsePlan(seqlen, block, mask, *block_mask_layout(mask), query_aware, dense=False)


def flexprefill_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockSparsePlan, *,
                       scale: float | None = None) -> torch.Tensor:
    """The block-sparse kernel over a plan: (B, S, Hq, D) in q's dtype."""
    return block_sparse_fwd(q, k, v, plan.kv_idx, plan.kv_count, q_block=plan.block_size,
                            key_block=plan.block_size, scale=scale)


def flexprefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, preset: str | None = None,
                          scale: float | None = None, time_stages: bool = False, with_density: bool = True,
                          **params) -> tuple[torch.Tensor, dict]:
    """FlexPrefill: the selection, then the block-sparse kernel.

    Args:
        q: (B, S, Hq, D); k, v: (B, S, Hkv, D) (seqlen_q must equal seqlen_k), GQA by Hq // Hkv.
        preset: a name of `PRESETS` (None: "default"); ``params`` override single values of
            `DEFAULTS` (gamma, tau, min_budget, max_budget, block_size).
        time_stages, with_density: as `vertical_slash_attention`.
    Returns:
        out (B, S, Hq, D) in q's dtype, and info: density, the share of query-aware heads,
        whether the dense path ran, the parameters.
    """
    params = flexprefill_params(preset, **params)
    plan, out, times = plan_then_attend(q.device, lambda: flexprefill_plan(q, k, scale=scale, **params),
                                        lambda p: flexprefill_sparse(q, k, v, p, scale=scale), time_stages=time_stages)
    info: dict = {"peer": "flexprefill", "preset": preset or "default", **params, "dense": plan.dense, **times}
    if with_density:
        info.update(density=plan.density(), query_aware_share=float(plan.query_aware.float().mean()))
    return out, info
