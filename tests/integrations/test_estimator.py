"""The pooled-query estimator prototype of the evaluation (random inputs, CPU)."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig
from sampleattn.eval.estimator import PooledSampleAttention
from sampleattn.reference import attention_ref, plan_ref


def qkv(seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, seqlen, 6, 64, generator=g)
    k = torch.randn(1, seqlen, 2, 64, generator=g)
    k[:, :3] *= 3.0  # a few heavy keys, so columns matter
    v = torch.randn(1, seqlen, 2, 64, generator=g)
    return q, k, v


def test_mix_zero_is_the_papers_rule():
    q, k, v = qkv(640)
    scale = 64 ** -0.5
    ours = PooledSampleAttention(alpha=0.9, mix=0.0, backend="torch").plan(q, k, scale)
    ref = plan_ref(q, k, SampleAttentionConfig(alpha=0.9, dense_below=0), scale=scale)
    assert torch.equal(ours.window.cpu(), ref.window.cpu())
    for head in range(6):
        assert torch.equal(ours.selected_columns(0, head), ref.selected_columns(0, head)), head


@pytest.mark.parametrize("mix", [0.5, 1.0])
def test_pooled_plan_runs_and_is_exact_at_alpha_one(mix):
    q, k, v = qkv(512)
    out, plan = PooledSampleAttention(alpha=0.9, mix=mix, backend="torch")(q, k, v, return_plan=True)
    assert 0 < plan.mean_density < 1 and torch.isfinite(out).all()
    exact = PooledSampleAttention(alpha=1.0, window_ratio=1.0, mix=mix, backend="torch")(q, k, v)
    torch.testing.assert_close(exact, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)


def test_rescored_subset_of_candidates_and_exact_at_alpha_one():
    from sampleattn.eval.estimator import RescoredSampleAttention

    q, k, v = qkv(512)
    loose = RescoredSampleAttention(alpha=0.9, candidate_alpha=0.99, backend="torch").plan(q, k, 64 ** -0.5)
    tight = RescoredSampleAttention(alpha=0.8, candidate_alpha=0.99, backend="torch").plan(q, k, 64 ** -0.5)
    assert 0 < tight.mean_density <= loose.mean_density < 1
    exact = RescoredSampleAttention(alpha=1.0, window_ratio=1.0, backend="torch")(q, k, v)
    torch.testing.assert_close(exact, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)
