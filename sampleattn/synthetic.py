"""Structured random q, k, v whose attention looks like a long-context LLM's: sinks, stripes, a local window.

`structured_qkv` builds queries and keys whose attention logits (under the usual
``softmax_scale = headdim ** -0.5``) are, for a query at absolute position ``i`` and a key at ``j``::

    logit(i, j) =  S_h * [j < n_sinks]                 attention sinks (the first keys)
                 + T_h * w_j * [j in stripes_g]        stripe columns ("heavy hitter" keys)
                 + B_h * kappa_g(i - j)                a local window decaying with distance
                 + noise                               content noise, std ``noise``

where ``h`` is the query head, ``g = h // (nheads_q // nheads_kv)`` its KV head (stripe columns
belong to the KV head, so query heads of one group share them, as in GQA), ``w_j`` in [0.7, 1] a
per-column weight, and ``kappa_g(d) ~ exp(-|d| / L_g)`` a decaying kernel of length ``L_g``
realised with random Fourier features (``cos(w (i - j)) = cos(w i) cos(w j) + sin(w i) sin(w j)``
with frequencies drawn from the kernel's Cauchy spectrum), so it is an exact dot product of a
query feature and a key feature. Far from the diagonal it leaves a small random ripple, as
RoPE does in real models; sink and stripe keys carry no such feature, so their strengths are
exactly the planted ones. Each KV head gets a random orthogonal rotation of the head dimension
(applied to its queries and keys alike, so logits are unchanged) so that no structure sits on
fixed coordinates.

The strengths ``S_h, T_h, B_h`` are set from target shares of attention mass at the last query
row (``sink_mass``, ``stripe_mass``, ``local_mass``; the rest goes to the background), each
multiplied per query head by a random factor in [1/2, 2] so that heads differ, as they do in
real models. The shares are approximate targets, not exact values.

Cost: O(batch * seqlen * heads * headdim^2) time and the output's memory; nothing is
O(seqlen^2). Deterministic for a given ``seed``: the structure (sinks, stripe columns and
weights, decay lengths, frequencies, rotations, strengths) is drawn on the CPU and is the same on
every device; the noise and the values are drawn on ``device`` from a generator seeded with
``seed``, so they repeat on one device type but differ between CPU and CUDA.

Layout: q ``(batch, seqlen_q, nheads_q, headdim)``, k and v ``(batch, seqlen_k, nheads_kv,
headdim)`` (flash-attn layout); queries are the last ``seqlen_q`` positions of the ``seqlen_k``
keys (bottom-right alignment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SyntheticLayout", "structured_qkv"]

_STRIPE_W_LOW = 0.7


@dataclass(frozen=True)
class SyntheticLayout:
    """The planted structure of one `structured_qkv` call (for tests and benchmarks).

    Attributes:
        n_sinks: the first ``n_sinks`` keys are sinks.
        stripes: ``(nheads_kv, n_stripes)`` int64, sorted key positions of each KV head's stripe columns.
        stripe_weights: ``(nheads_kv, n_stripes)`` float32, the per-column weight ``w_j`` in [0.7, 1].
        decay: ``(nheads_kv,)`` float32, the local window's e-folding length ``L_g`` in tokens.
        sink_logit, stripe_logit, local_logit: ``(nheads_q,)`` float32, the strengths ``S_h``,
            ``T_h`` and ``B_h`` of each query head.
    """

    n_sinks: int
    stripes: torch.Tensor
    stripe_weights: torch.Tensor
    decay: torch.Tensor
    sink_logit: torch.Tensor
    stripe_logit: torch.Tensor
    local_logit: torch.Tensor


def _bisect(f, lo: float, hi: float, target: float, iters: int = 60) -> float:
    """Solve ``f(x) = target`` for increasing ``f`` on [lo, hi] (clamped to the interval)."""
    if f(lo) >= target:
        return lo
    if f(hi) <= target:
        return hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _stripe_weight_sum(t: float, n: int) -> float:
    """Expected ``sum_j exp(t * w_j)`` over ``n`` stripes with ``w_j ~ U(0.7, 1)``."""
    if t < 1e-6:
        return float(n)
    return n * (math.exp(t) - math.exp(_STRIPE_W_LOW * t)) / ((1 - _STRIPE_W_LOW) * t)


def _local_weight_table(decay: float, seqlen: int, betas: torch.Tensor) -> torch.Tensor:
    """``sum_{0 <= d < seqlen} (exp(beta * exp(-d / L)) - 1)`` for every ``beta`` in ``betas``: the
    local window's weight above the background. Long windows are summed on a strided grid of at
    most 4096 distances (the terms vary on the scale L, far wider than the stride)."""
    n = min(seqlen, int(60 * decay) + 1)
    stride = max(1, math.ceil(n / 4096))
    d = torch.arange(0, n, stride, dtype=torch.float64)
    return torch.expm1(betas[:, None] * torch.exp(-d / decay)[None, :]).sum(-1) * stride


def structured_qkv(
    batch: int,
    seqlen_q: int,
    seqlen_k: int,
    nheads_q: int,
    nheads_kv: int,
    headdim: int,
    *,
    n_sinks: int = 4,
    n_stripes: int | None = None,
    density: float = 0.01,
    local_decay: float | None = None,
    sink_mass: float = 0.2,
    stripe_mass: float = 0.35,
    local_mass: float = 0.3,
    noise: float = 0.5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    return_layout: bool = False,
) -> (
    tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    | tuple[torch.Tensor, torch.Tensor, torch.Tensor, SyntheticLayout]
):
    """Draw q, k, v with planted sinks, stripe columns and a decaying local window.

    Args:
        batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, headdim: the shapes; ``nheads_q`` must be a
            multiple of ``nheads_kv`` and ``headdim >= 8``.
        n_sinks: number of leading keys that every query attends to strongly.
        n_stripes: stripe columns per KV head; default ``round(density * seqlen_k)`` (at least 1
            when ``density > 0``).
        density: fraction of key columns that are stripes when ``n_stripes`` is not given: the knob
            for how many columns a sparse method must keep.
        local_decay: e-folding length of the local window in tokens, for every head; default: per
            KV head, log-uniform in ``[8, max(32, seqlen_k / 64)]``.
        sink_mass, stripe_mass, local_mass: target shares of the last query row's attention mass
            (approximate); the background gets the rest, which must be positive.
        noise: standard deviation of the random content logits.
        dtype, device: of the returned tensors (computed in float32).
        seed: seeds everything (see the module docstring for what repeats across devices).
        return_layout: also return the `SyntheticLayout`.

    Returns:
        ``q (batch, seqlen_q, nheads_q, headdim)``, ``k (batch, seqlen_k, nheads_kv, headdim)``,
        ``v (batch, seqlen_k, nheads_kv, headdim)``, and the layout if asked for.
    """
    for name, value in (
        ("batch", batch),
        ("seqlen_q", seqlen_q),
        ("seqlen_k", seqlen_k),
        ("nheads_q", nheads_q),
        ("nheads_kv", nheads_kv),
    ):
        if int(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if nheads_q % nheads_kv:
        raise ValueError(f"nheads_q ({nheads_q}) must be a multiple of nheads_kv ({nheads_kv})")
    if headdim < 8:
        raise ValueError(f"headdim must be at least 8 to hold the planted structure, got {headdim}")
    if not 0 <= n_sinks <= seqlen_k:
        raise ValueError(f"n_sinks must be in [0, seqlen_k={seqlen_k}], got {n_sinks}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if min(sink_mass, stripe_mass, local_mass) < 0:
        raise ValueError("sink_mass, stripe_mass and local_mass must be non-negative")
    background = 1.0 - sink_mass - stripe_mass - local_mass
    if background <= 0:
        raise ValueError(
            f"sink_mass + stripe_mass + local_mass = {1 - background:.3f}; it must stay below 1 "
            "(the rest is the background's share)"
        )
    available = seqlen_k - n_sinks
    if n_stripes is None:
        n_stripes = 0 if density == 0 else max(1, round(density * seqlen_k))
    n_stripes = int(min(max(n_stripes, 0), available))
    if local_decay is not None and local_decay <= 0:
        raise ValueError(f"local_decay must be positive (tokens), got {local_decay}")

    group = nheads_q // nheads_kv
    n_pairs = max(1, headdim // 2 - 4)  # random Fourier features: 2 * n_pairs dims
    n_noise = headdim - 2 - 2 * n_pairs  # >= 2 for headdim >= 8
    gen = torch.Generator().manual_seed(int(seed))

    # ---- structure, drawn on the CPU (identical on every device) -------------------------------
    if local_decay is None:
        hi = max(32.0, seqlen_k / 64)
        decay = torch.exp(
            math.log(8.0) + torch.rand(nheads_kv, generator=gen, dtype=torch.float64) * math.log(hi / 8.0)
        )
    else:
        decay = torch.full((nheads_kv,), float(local_decay), dtype=torch.float64)
    # Half-Cauchy quantiles, stratified with a jitter: spectrum of exp(-|d| / L).
    u = (
        torch.arange(n_pairs, dtype=torch.float64)
        + torch.rand(nheads_kv, n_pairs, generator=gen, dtype=torch.float64)
    ) / n_pairs
    omega = torch.tan(0.5 * math.pi * u.clamp(max=1 - 1e-9)) / decay[:, None]  # (hkv, n_pairs)
    if n_stripes:
        stripes = torch.stack(
            [
                torch.randperm(available, generator=gen)[:n_stripes].sort().values + n_sinks
                for _ in range(nheads_kv)
            ]
        )
    else:
        stripes = torch.zeros(nheads_kv, 0, dtype=torch.long)
    stripe_w = _STRIPE_W_LOW + (1 - _STRIPE_W_LOW) * torch.rand(nheads_kv, n_stripes, generator=gen)
    rotations = torch.linalg.qr(torch.randn(nheads_kv, headdim, headdim, generator=gen, dtype=torch.float64)).Q
    # Per query head, each component's target share is multiplied by a factor in [1/2, 2].
    head_factor = torch.exp((2 * torch.rand(3, nheads_q, generator=gen, dtype=torch.float64) - 1) * math.log(2.0))

    # ---- strengths from the target mass shares ---------------------------------------------------
    # Background weight per key: exp(0) inflated by the content noise and by the ripple of the
    # Fourier features far from the diagonal (variance ~ B^2 / (2 n_pairs)).
    sink_logit = torch.zeros(nheads_q, dtype=torch.float64)
    stripe_logit = torch.zeros(nheads_q, dtype=torch.float64)
    local_logit = torch.zeros(nheads_q, dtype=torch.float64)
    betas = torch.linspace(0.0, 60.0, 1201, dtype=torch.float64)
    for g in range(nheads_kv):
        table = _local_weight_table(float(decay[g]), seqlen_k, betas)  # increasing in beta
        for h in range(g * group, (g + 1) * group):
            f_sink, f_stripe, f_local = (float(x) for x in head_factor[:, h])
            beta = 0.0
            for _ in range(4):  # fixed point: the ripple depends on beta
                inflation = math.exp(0.5 * noise**2 + beta**2 / (4 * n_pairs))  # E[exp(noise + ripple)]
                unit = seqlen_k * inflation / background  # expected total weight of the row
                target = torch.tensor([local_mass * f_local * unit], dtype=torch.float64)
                index = int(torch.searchsorted(table, target).clamp(1, len(betas) - 1))
                lo, hi = float(table[index - 1]), float(table[index])
                frac = 0.0 if hi <= lo else min(max((float(target) - lo) / (hi - lo), 0.0), 1.0)
                beta = float(betas[index - 1]) + frac * float(betas[1] - betas[0])
            local_logit[h] = beta
            # Sinks and stripes carry the content noise (but no ripple): divide its inflation out.
            noise_inflation = math.exp(0.5 * noise**2)
            if n_sinks:
                sink_logit[h] = math.log(max(sink_mass * f_sink * unit / (n_sinks * noise_inflation), 1.0))
            if n_stripes:
                target = stripe_mass * f_stripe * unit / noise_inflation
                stripe_logit[h] = _bisect(lambda t: _stripe_weight_sum(t, n_stripes), 0.0, 80.0, target)

    # ---- tensors, one KV head at a time ---------------------------------------------------------
    device = torch.device(device)
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
    scale = headdim**0.25  # q . k * headdim**-0.5 == logit
    q = torch.empty(batch, seqlen_q, nheads_q, headdim, dtype=dtype, device=device)
    k = torch.empty(batch, seqlen_k, nheads_kv, headdim, dtype=dtype, device=device)
    v = torch.randn(batch, seqlen_k, nheads_kv, headdim, generator=noise_gen, device=device).to(dtype)
    pos_k = torch.arange(seqlen_k, dtype=torch.float64, device=device)
    pos_q = torch.arange(seqlen_k - seqlen_q, seqlen_k, dtype=torch.float64, device=device)
    feat_norm = 1.0 / math.sqrt(n_pairs)
    for g in range(nheads_kv):
        w = omega[g].to(device)
        phase_k, phase_q = torch.outer(pos_k, w), torch.outer(pos_q, w)
        feat_k = (torch.cat([phase_k.cos(), phase_k.sin()], dim=-1) * feat_norm).float()  # (sk, 2m)
        feat_q = (torch.cat([phase_q.cos(), phase_q.sin()], dim=-1) * feat_norm).float()  # (sq, 2m)
        rot = rotations[g].float().to(device)

        kb = torch.zeros(batch, seqlen_k, headdim, device=device)
        kb[:, :n_sinks, 0] = 1.0
        if n_stripes:
            kb[:, stripes[g].to(device), 1] = stripe_w[g].to(device)
        kb[:, :, 2 : 2 + 2 * n_pairs] = feat_k
        kb[:, :n_sinks, 2 : 2 + 2 * n_pairs] = 0.0  # sinks and stripes: no local ripple, exact strengths
        if n_stripes:
            kb[:, stripes[g].to(device), 2 : 2 + 2 * n_pairs] = 0.0
        kb[:, :, 2 + 2 * n_pairs :] = torch.randn(
            batch, seqlen_k, n_noise, generator=noise_gen, device=device
        ) / math.sqrt(n_noise)
        k[:, :, g] = ((kb @ rot) * scale).to(dtype)

        for h in range(g * group, (g + 1) * group):
            qb = torch.empty(batch, seqlen_q, headdim, device=device)
            qb[:, :, 0] = float(sink_logit[h])
            qb[:, :, 1] = float(stripe_logit[h])
            qb[:, :, 2 : 2 + 2 * n_pairs] = feat_q * float(local_logit[h])
            qb[:, :, 2 + 2 * n_pairs :] = noise * torch.randn(
                batch, seqlen_q, n_noise, generator=noise_gen, device=device
            )
            q[:, :, h] = ((qb @ rot) * scale).to(dtype)

    if not return_layout:
        return q, k, v
    layout = SyntheticLayout(
        n_sinks=n_sinks,
        stripes=stripes,
        stripe_weights=stripe_w.float(),
        decay=decay.float(),
        sink_logit=sink_logit.float(),
        stripe_logit=stripe_logit.float(),
        local_logit=local_logit.float(),
    )
    return q, k, v, layout
