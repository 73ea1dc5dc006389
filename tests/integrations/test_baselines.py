"""Baselines at matched density (random inputs, CPU, plain-PyTorch paths)."""

from __future__ import annotations

import pytest
import torch

from sampleattn import baselines as bl
from sampleattn.reference import attention_ref, causal_mask


def qkv(seqlen_q, seqlen_k, nheads_q=6, nheads_kv=2, head_dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, seqlen_q, nheads_q, head_dim, generator=g)
    k = torch.randn(1, seqlen_k, nheads_kv, head_dim, generator=g)
    v = torch.randn(1, seqlen_k, nheads_kv, head_dim, generator=g)
    return q, k, v


PLAN_BASELINES = [
    lambda t: bl.WindowBaseline(t, backend="torch"),
    lambda t: bl.StreamingLLMBaseline(t, backend="torch"),
    lambda t: bl.BigBirdBaseline(t, backend="torch"),
]


@pytest.mark.parametrize("make", PLAN_BASELINES, ids=["window", "streamingllm", "bigbird"])
@pytest.mark.parametrize("target", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(700, 700), (300, 700)])
def test_plan_baselines_match_density_and_their_mask(make, target, seqlen_q, seqlen_k):
    q, k, v = qkv(seqlen_q, seqlen_k)
    out, plan = make(target)(q, k, v, layer=0, return_plan=True)
    assert plan.density.mean().item() == pytest.approx(target, abs=0.01)
    mask = plan.to_dense()
    visible = causal_mask(seqlen_q, seqlen_k).sum().item()
    realised = (mask & causal_mask(seqlen_q, seqlen_k)).sum((-1, -2)).float() / visible
    torch.testing.assert_close(realised, plan.density, atol=1e-4, rtol=0)
    torch.testing.assert_close(out, attention_ref(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)


def test_per_layer_targets():
    q, k, v = qkv(512, 512)
    op = bl.WindowBaseline({0: 0.1, 1: 0.4}, backend="torch")
    assert op(q, k, v, layer=0, return_plan=True)[1].mean_density == pytest.approx(0.1, abs=0.01)
    assert op(q, k, v, layer=1, return_plan=True)[1].mean_density == pytest.approx(0.4, abs=0.01)
    with pytest.raises(ValueError, match="layer 2"):
        op(q, k, v, layer=2)


def test_streamingllm_keeps_sinks():
    q, k, v = qkv(512, 512)
    _, plan = bl.StreamingLLMBaseline(0.2, backend="torch", n_sink=4)(q, k, v, return_plan=True)
    mask = plan.to_dense()
    assert mask[..., 100:, :4].all()


@pytest.mark.parametrize("target", [0.15, 0.4])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(512, 512), (200, 512)])
def test_vertical_slash_matches_density(target, seqlen_q, seqlen_k):
    q, k, v = qkv(seqlen_q, seqlen_k)
    out, report = bl.VerticalSlashBaseline(target)(q, k, v, return_plan=True)
    assert report.mean_density == pytest.approx(target, abs=0.02)
    assert torch.isfinite(out).all()


def test_vertical_slash_pair_count_equals_mask():
    op = bl.VerticalSlashBaseline(0.2, force_sinks=3, force_local=5)
    p = torch.softmax(torch.randn(1, 2, 300, 300), -1)
    vertical, slash = op._scores(p, 300, 300)
    for n in (4, 40, 150):
        cols, offs = op._keeps(vertical, slash, n)
        assert torch.equal(op._mask(vertical, slash, n, 300, 300).sum((-1, -2)).double(),
                           op._kept_pairs(cols, offs, 300))


def test_oracle_reaches_alpha_per_row():
    q, k, v = qkv(256, 256)
    oracle = bl.OracleBaseline(0.9)
    s = bl._group_scores(q, k, 0, q.shape[-1] ** -0.5)
    p = torch.softmax(s, -1)
    keep = oracle.group_mask(s, p, layer=0, seqlen_q=256, seqlen_k=256)
    retained = torch.where(keep, p, 0.0).sum(-1)
    assert (retained >= 0.9 - 1e-5).all()
    # fewest keys: dropping the smallest kept key goes below alpha
    smallest = torch.where(keep, p, torch.inf).min(-1).values
    assert (retained - smallest < 0.9 + 1e-5).all()
    out, report = oracle(q, k, v, return_plan=True)
    assert 0 < report.mean_density < 1
    exact = bl.OracleBaseline(1.0)(q, k, v)
    torch.testing.assert_close(exact, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)
