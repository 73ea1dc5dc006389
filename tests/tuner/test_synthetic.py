"""The structured random generator `sampleattn.synthetic.structured_qkv`: shapes, determinism, and
that the planted sinks, stripe columns and local window really carry the attention mass."""

from __future__ import annotations

import time

import pytest
import torch

from sampleattn.synthetic import structured_qkv


def _last_rows_attention(q, k, rows: int) -> torch.Tensor:
    """Causal attention probabilities of the last ``rows`` queries: (nheads_q, rows, seqlen_k), batch 0."""
    seqlen_q, nheads_q, headdim = q.shape[1], q.shape[2], q.shape[3]
    seqlen_k, nheads_kv = k.shape[1], k.shape[2]
    kk = k[0].float().repeat_interleave(nheads_q // nheads_kv, dim=1)  # (sk, hq, d)
    qq = q[0, seqlen_q - rows :].float()  # (rows, hq, d)
    logits = torch.einsum("qhd,khd->hqk", qq, kk) * headdim**-0.5
    pos_q = torch.arange(seqlen_k - rows, seqlen_k)
    logits = logits.masked_fill(torch.arange(seqlen_k)[None, :] > pos_q[:, None], float("-inf"))
    return logits.softmax(-1)


@pytest.mark.parametrize(
    "batch,seqlen_q,seqlen_k,hq,hkv,d",
    [(1, 257, 257, 4, 4, 64), (2, 64, 1000, 8, 2, 128), (1, 97, 97, 9, 3, 8), (1, 1, 513, 6, 1, 96)],
)
def test_shapes_and_dtype(batch, seqlen_q, seqlen_k, hq, hkv, d):
    q, k, v = structured_qkv(batch, seqlen_q, seqlen_k, hq, hkv, d, dtype=torch.bfloat16, seed=1)
    assert q.shape == (batch, seqlen_q, hq, d) and k.shape == v.shape == (batch, seqlen_k, hkv, d)
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16
    assert all(torch.isfinite(t.float()).all() for t in (q, k, v))


def test_deterministic_with_a_seed():
    a = structured_qkv(1, 300, 300, 4, 2, 64, seed=7)
    b = structured_qkv(1, 300, 300, 4, 2, 64, seed=7)
    c = structured_qkv(1, 300, 300, 4, 2, 64, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_queries_are_bottom_right_aligned():
    """Decode-style queries (seqlen_q < seqlen_k) see the same structure as the last rows of a prefill."""
    _, k_full, _, layout = structured_qkv(1, 512, 512, 2, 1, 64, seed=3, noise=0.0, return_layout=True)
    q_tail, k_tail, _, layout_tail = structured_qkv(1, 16, 512, 2, 1, 64, seed=3, noise=0.0, return_layout=True)
    assert torch.equal(layout.stripes, layout_tail.stripes)
    p = _last_rows_attention(q_tail, k_tail, 16)
    near = p[:, :, -8:].sum(-1).mean()  # the local window sits at the end of the keys
    assert near > 0.05


def test_planted_structure_carries_the_mass():
    seqlen, hq, hkv, d = 4096, 8, 2, 64
    q, k, _, layout = structured_qkv(
        1, seqlen, seqlen, hq, hkv, d, n_sinks=4, density=0.01, seed=0, return_layout=True
    )
    assert layout.stripes.shape == (hkv, 41) and layout.n_sinks == 4
    p = _last_rows_attention(q, k, 64)  # (hq, 64, seqlen)
    group = hq // hkv
    for h in range(hq):
        stripes = layout.stripes[h // group]
        per_column = p[h].mean(0)  # average attention each key column receives
        others = torch.ones(seqlen, dtype=torch.bool)
        others[:4] = False
        others[stripes] = False
        others[seqlen - 256 :] = False  # leave the local window out of the background
        background = per_column[others].mean()
        assert per_column[stripes].mean() > 50 * background, f"head {h}: stripes are not heavy hitters"
        assert per_column[:4].mean() > 50 * background, f"head {h}: no attention sinks"
        # Stripes and sinks together hold a large share of the mass, on few columns.
        assert p[h][:, stripes].sum(-1).mean() > 0.15
        assert p[h][:, :4].sum(-1).mean() > 0.05
    # The local window: the keys just before each query get far more than the background.
    diag = torch.stack([p[:, i, seqlen - 64 + i - 3 : seqlen - 64 + i + 1].sum(-1) for i in range(64)], dim=1)
    assert diag.mean() > 0.05


def test_density_sets_the_number_of_stripes():
    _, _, _, sparse = structured_qkv(1, 64, 2000, 2, 2, 32, density=0.005, return_layout=True)
    _, _, _, dense = structured_qkv(1, 64, 2000, 2, 2, 32, density=0.05, return_layout=True)
    _, _, _, fixed = structured_qkv(1, 64, 2000, 2, 2, 32, n_stripes=7, return_layout=True)
    _, _, _, none = structured_qkv(1, 64, 2000, 2, 2, 32, density=0.0, return_layout=True)
    assert (sparse.stripes.shape[1], dense.stripes.shape[1], fixed.stripes.shape[1], none.stripes.shape[1]) == (
        10,
        100,
        7,
        0,
    )
    assert bool((sparse.stripes >= 4).all())  # never on the sinks


def test_errors():
    with pytest.raises(ValueError, match="multiple"):
        structured_qkv(1, 8, 8, 3, 2, 64)
    with pytest.raises(ValueError, match="headdim"):
        structured_qkv(1, 8, 8, 2, 2, 4)
    with pytest.raises(ValueError, match="below 1"):
        structured_qkv(1, 8, 8, 2, 2, 64, sink_mass=0.5, stripe_mass=0.5)
    with pytest.raises(ValueError, match="seqlen_k"):
        structured_qkv(1, 8, 0, 2, 2, 64)


def test_fast_at_long_lengths():
    """Nothing is O(seqlen^2): 64K tokens x 4 heads generate in seconds on the CPU."""
    started = time.perf_counter()
    q, k, v = structured_qkv(1, 65536, 65536, 4, 2, 64, seed=0)
    assert time.perf_counter() - started < 10.0
    assert q.shape == (1, 65536, 4, 64)
