"""Plain-PyTorch oracles of the peers, for small inputs: each selection built from scratch by its
definition (dense masks, loops over heads), and masked attention on those masks.

* `vertical_slash_mask_ref`: MInference's mask (see `vertical_slash` for the definition).
* `flexprefill_mask_ref`: FlexPrefill's mask, one head at a time.
* `masked_attention_ref`: exact attention under a dense mask (`sampleattn.reference.attention_ref`).
* `masked_attention_rows`: the same for some rows of a long input, the mask given per KV head's
  query heads (memory O(rows * Sk) per head), for the benchmark's own-mask check.

They materialise (B, Hq, Sq, Sk) masks: tests and checks only, never long sequences.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sampleattn.reference import attention_ref, causal_mask

from .flexprefill import flexprefill_params
from .vertical_slash import vertical_slash_params

__all__ = ["flexprefill_mask_ref", "masked_attention_ref", "masked_attention_rows", "vertical_slash_mask_ref"]


def masked_attention_ref(q, k, v, mask: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Exact attention (fp32 accumulation) under ``mask`` (B, Hq, Sq, Sk) bool and the causal mask."""
    return attention_ref(q, k, v, mask=mask, scale=scale)


def _head_softmax_rows(q_rows: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor, scale: float):
    """(R, Sk) fp32 softmax of query rows (R, D) at ``positions`` against keys (Sk, D), causal."""
    s = (q_rows @ keys.T).float() * scale
    j = torch.arange(keys.shape[0], device=keys.device)
    return torch.softmax(s.masked_fill(j.view(1, -1) > positions.view(-1, 1), float("-inf")), dim=-1)


def _diagonals_by_loop(p: torch.Tensor, positions: torch.Tensor, seqlen_k: int) -> torch.Tensor:
    """(Sk,) sums of p (R, Sk) along offsets ``delta = position - j``, row by row."""
    out = torch.zeros(seqlen_k, dtype=p.dtype, device=p.device)
    for r, pos in enumerate(positions.tolist()):
        out[: pos + 1] += p[r, : pos + 1].flip(0)
    return out


def vertical_slash_mask_ref(q: torch.Tensor, k: torch.Tensor, *, preset: str | None = None,
                            scale: float | None = None, **params) -> torch.Tensor:
    """MInference's vertical-slash mask, (B, Hq, Sq, Sk) bool, by its definition."""
    params = vertical_slash_params(preset, **params)
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, group = k.shape[1], nheads_q // k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block_m = params["block_m"]
    n_rows = min(params["last_q"], seqlen_q)
    positions = torch.arange(seqlen_k - n_rows, seqlen_k, device=q.device)
    rows = torch.arange(seqlen_q, device=q.device)
    start = (seqlen_k - seqlen_q) + (rows // block_m) * block_m  # each row's block start
    j = torch.arange(seqlen_k, device=q.device)
    distance = start.view(-1, 1) - j.view(1, -1)  # (Sq, Sk)
    nv = min(seqlen_k, max(params["vertical_size"], params["sink_columns"]))
    ns = min(seqlen_k, max(params["slash_size"], params["local_diagonals"]))
    mask = torch.zeros(batch, nheads_q, seqlen_q, seqlen_k, dtype=torch.bool, device=q.device)
    for b in range(batch):
        for h in range(nheads_q):
            p = _head_softmax_rows(q[b, seqlen_q - n_rows:, h], k[b, :, h // group], positions, scale)
            vertical, slash = p.sum(0), _diagonals_by_loop(p, positions, seqlen_k)
            vertical[: params["sink_columns"]] = float("inf")
            slash[: params["local_diagonals"]] = float("inf")
            cols = vertical.topk(nv).indices
            offsets = slash.topk(ns).indices.sort().values
            # Key j is in the block's ranges iff some selected delta has distance <= delta <= distance + block_m - 1.
            at = torch.searchsorted(offsets, distance.clamp(min=0).contiguous()).clamp(max=ns - 1)
            nearest = offsets[at]
            in_range = (nearest >= distance) & (nearest <= distance + block_m - 1)
            column = torch.zeros(seqlen_k, dtype=torch.bool, device=q.device)
            column[cols] = True
            mask[b, h] = in_range | column.view(1, -1)
    return mask & causal_mask(seqlen_q, seqlen_k, q.device)


def flexprefill_mask_ref(q: torch.Tensor, k: torch.Tensor, *, preset: str | None = None,
                         scale: float | None = None, **params) -> torch.Tensor:
    """FlexPrefill's block-sparse mask, (B, Hq, S, S) bool, one head at a time (see `flexprefill`)."""
    params = flexprefill_params(preset, **params)
    batch, seqlen, nheads_q, head_dim = q.shape
    if k.shape[1] != seqlen:
        raise ValueError("FlexPrefill needs seqlen_q == seqlen_k")
    group = nheads_q // k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block, gamma = params["block_size"], params["gamma"]
    nb = -(-seqlen // block)
    min_blocks = -(-params["min_budget"] // block) if params["min_budget"] else 1
    max_blocks = nb if params["max_budget"] is None else min(nb, -(-params["max_budget"] // block))
    tril = torch.tril(torch.ones(nb, nb, dtype=torch.bool, device=q.device))
    blocks = torch.zeros(batch, nheads_q, nb, nb, dtype=torch.bool, device=q.device)
    if seqlen <= max(2 * block, min_blocks * block):
        blocks[:] = tril
    else:
        positions = torch.arange(seqlen - block, seqlen, device=q.device)
        for b in range(batch):
            for h in range(nheads_q):
                qh, kh = q[b, :, h].float(), k[b, :, h // group].float()
                p = _head_softmax_rows(q[b, seqlen - block:, h], k[b, :, h // group], positions, scale)
                vertical = p.mean(0)
                slash = _diagonals_by_loop(p, positions, seqlen) / block

                def budget(scores):
                    running = torch.cumsum(scores.sort(descending=True).values, 0)
                    return min(max(int((running <= gamma).sum() + 1) // block + 1, min_blocks), max_blocks)

                n_vertical, n_slash = budget(vertical), budget(slash)
                vertical_blocks = torch.stack([vertical[c * block:(c + 1) * block].sum() for c in range(nb)])
                slash_blocks = torch.stack([slash[c * block:(c + 1) * block].sum() for c in range(nb)])
                mean_k = torch.stack([kh[c * block:(c + 1) * block].mean(0) for c in range(nb)])
                estimate = torch.softmax((qh[seqlen - block:] * scale).mean(0) @ mean_k.T, dim=0)
                mid = (estimate + vertical_blocks) / 2
                js = 0.5 * torch.special.xlogy(estimate, estimate / mid).sum() + \
                    0.5 * torch.special.xlogy(vertical_blocks, vertical_blocks / mid).sum()
                query_aware = bool(js.clamp(min=0).sqrt() < params["tau"])
                if query_aware:
                    n_vertical = n_slash = min_blocks
                vertical_blocks[0] = slash_blocks[0] = float("inf")
                chosen_k = set(vertical_blocks.topk(min(n_vertical, nb)).indices.tolist())
                chosen_d = set(slash_blocks.topk(min(n_slash, nb)).indices.tolist())
                for i in range(nb):
                    for c in range(i + 1):
                        blocks[b, h, i, c] = c in chosen_k or (i - c) in chosen_d
                if query_aware:
                    mean_q = torch.stack([qh[c * block:(c + 1) * block].mean(0) for c in range(nb)]) * scale
                    prob = torch.softmax((mean_q @ mean_k.T).masked_fill(~tril, float("-inf")), dim=-1).flatten()
                    ranked, order = prob.sort(descending=True)
                    taken = order[torch.cumsum(ranked, 0) <= gamma * nb]
                    blocks[b, h].view(-1)[taken] = True
    j = torch.arange(seqlen, device=q.device)
    dense = blocks[:, :, j // block][..., j // block]
    return dense & causal_mask(seqlen, seqlen, q.device)


def masked_attention_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                          mask_rows: Callable[[torch.Tensor, slice], torch.Tensor], *,
                          scale: float | None = None) -> torch.Tensor:
    """Exact attention (fp32) of some query rows under a method's own mask: (B, len(rows), Hq, D).

    ``mask_rows(rows, heads)`` gives the mask of those rows for a slice of query heads,
    (B, len(heads), len(rows), Sk) bool (a plan's ``mask_rows``); it is asked for one KV head's
    query heads at a time, so memory stays O(len(rows) * Sk) per head.
    """
    seqlen_q, seqlen_k, nheads_q = q.shape[1], k.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    rows = rows.to(q.device, torch.int64)
    group = nheads_q // k.shape[2]
    qh = q[:, rows].transpose(1, 2).float()
    out = torch.empty(q.shape[0], nheads_q, len(rows), q.shape[-1], device=q.device)
    pos = (seqlen_k - seqlen_q + rows).view(-1, 1)
    j = torch.arange(seqlen_k, device=q.device).view(1, -1)
    for kv in range(k.shape[2]):
        heads = slice(kv * group, (kv + 1) * group)
        s = torch.matmul(qh[:, heads], k[:, :, kv].float().transpose(-1, -2).unsqueeze(1)) * scale
        keep = mask_rows(rows, heads) & (j <= pos)
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
        out[:, heads] = torch.matmul(p, v[:, :, kv].float().unsqueeze(1))
        del s, keep, p
    return out.transpose(1, 2)
