"""Fidelity of a model's logits against full attention: KL, top-1 agreement, perplexity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LogitStats", "compare_logits"]


@dataclass(frozen=True)
class LogitStats:
    """Sums over the tokens of one input (so that several inputs can be pooled).

    Attributes:
        tokens: positions compared (every position of the input).
        kl_sum: sum over positions of KL(full || method) in nats.
        top1_sum: positions where the method's argmax equals full attention's.
        nll_sum, nll_full_sum: next-token negative log-likelihood summed over positions 0..L-2
            (``nll_tokens`` of them), of the method and of full attention.
    """

    tokens: int
    kl_sum: float
    top1_sum: float
    nll_tokens: int
    nll_sum: float
    nll_full_sum: float


def compare_logits(full: torch.Tensor, other: torch.Tensor, input_ids: torch.Tensor, *,
                   chunk: int = 2048) -> LogitStats:
    """Compare two runs on the same input.

    Args:
        full, other: (1, L, V) logits of full attention and of the method (any float dtype;
            computed in fp32, ``chunk`` positions at a time to bound memory).
        input_ids: (1, L) the input, for next-token perplexity.
    """
    if full.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(full.shape)} vs {tuple(other.shape)}")
    length = full.shape[1]
    targets = input_ids[0, 1:].to(full.device)
    kl = top1 = nll = nll_full = 0.0
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        lp = torch.log_softmax(full[0, start:stop].float(), -1)
        lq = torch.log_softmax(other[0, start:stop].float(), -1)
        kl += float((lp.exp() * (lp - lq)).sum())
        top1 += float((lp.argmax(-1) == lq.argmax(-1)).sum())
        last = min(stop, length - 1)
        if last > start:
            t = targets[start:last].view(-1, 1)
            nll -= float(lq[: last - start].gather(1, t).sum())
            nll_full -= float(lp[: last - start].gather(1, t).sum())
        del lp, lq
    return LogitStats(length, kl, top1, length - 1, nll, nll_full)
