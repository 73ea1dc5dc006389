"""The attention of the last query rows, and its column and diagonal sums: what both peers'
estimates start from (MInference: the last 64 rows; FlexPrefill: the last block of 128)."""

from __future__ import annotations

import torch

__all__ = ["diagonal_sums", "last_rows_softmax"]


def last_rows_softmax(q: torch.Tensor, k: torch.Tensor, n_rows: int, scale: float) -> torch.Tensor:
    """Softmax of the last ``n_rows`` query rows over every visible key, per query head.

    Args:
        q: (B, Sq, Hq, D); k: (B, Sk, Hkv, D); query row ``Sq - n_rows + r`` sits at position
            ``p_r = Sk - n_rows + r`` (bottom-right causal) and sees keys ``j <= p_r``.
    Returns:
        (B, Hq, n_rows, Sk) fp32. The products run in the input dtype (tensor cores, as the
        peers' own estimates do) and the softmax in fp32. Memory: ``4 * B * Hq * n_rows * Sk``
        bytes (1 GiB for 32 heads x 64 rows at 128K).
    """
    batch, seqlen_q, nheads_q, head_dim = q.shape
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    group = nheads_q // nheads_kv
    tail = q[:, seqlen_q - n_rows:].permute(0, 2, 1, 3).reshape(batch, nheads_kv, group, n_rows, head_dim)
    keys = k.permute(0, 2, 3, 1).unsqueeze(2)  # (B, Hkv, 1, D, Sk)
    s = torch.matmul(tail, keys).float().mul_(scale).view(batch, nheads_q, n_rows, seqlen_k)
    r = torch.arange(n_rows, device=q.device).view(-1, 1)
    j = torch.arange(n_rows, device=q.device).view(1, -1)
    s[..., seqlen_k - n_rows:].masked_fill_(j > r, float("-inf"))  # keys after p_r
    return torch.softmax(s, dim=-1)


def diagonal_sums(p: torch.Tensor) -> torch.Tensor:
    """Sum of ``p`` along each diagonal offset ``delta = p_r - j`` (0: the main diagonal).

    Args:
        p: (B, H, R, Sk), row ``r`` at position ``p_r = Sk - R + r`` (as `last_rows_softmax`).
    Returns:
        (B, H, Sk) fp32: entry ``delta`` is ``sum_r p[r, p_r - delta]`` (terms with
        ``p_r - delta < 0`` are absent).

    Row r is flipped (its column ``p_r - delta`` moves to ``R - 1 - r + delta``) and padded with
    R - 1 zeros; a strided view with row stride ``W - 1`` then lines every row up on ``delta``.
    """
    batch, heads, rows, seqlen_k = p.shape
    width = seqlen_k + rows - 1
    padded = torch.nn.functional.pad(p.flip(-1), (0, rows - 1))  # (B, H, R, W), contiguous
    lined = padded.as_strided((batch, heads, rows, seqlen_k), (heads * rows * width, rows * width, width - 1, 1),
                              storage_offset=rows - 1)
    return lined.sum(dim=2)
