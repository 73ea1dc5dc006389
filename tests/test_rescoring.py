"""The rescoring selection (``selection="rescored"``): kernels against the reference, and the
properties that make it worth its cost."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from sampleattn import SampleAttentionConfig, plan, sample_attention
from sampleattn.kernels import rescore_candidates
from sampleattn.reference import attention_ref, causal_mask, plan_ref, rescore_ref
from sampleattn.rescoring import ranking_rows
from sampleattn.synthetic import structured_qkv

from kernel_helpers import DEVICE, qkv, rel_err


def cfg(**kw):
    kw.setdefault("dense_below", 0)
    kw.setdefault("block_m", 32)
    kw.setdefault("selection", "rescored")
    return SampleAttentionConfig(**kw)


def true_retained(q, k, sparse_plan):
    """(mean, per-row) true attention mass that the plan's mask keeps, over every row and head."""
    group = q.shape[2] // k.shape[2]
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float().repeat_interleave(group, dim=2))
    s = s / math.sqrt(q.shape[-1])
    p = torch.softmax(s.masked_fill(~causal_mask(q.shape[1], k.shape[1], q.device), float("-inf")), -1)
    kept = (p * sparse_plan.to_dense()).sum(-1)
    return kept.mean().item(), kept


CASES = [
    # (seqlen_q, seqlen_k, Hq, Hkv, D, granularity, rescore_stride, dtype)
    (97, 97, 4, 2, 64, "query_head", 1, torch.float32),
    (97, 97, 4, 2, 64, "kv_head", 1, torch.float32),
    (64, 200, 3, 1, 128, "kv_head", 2, torch.float32),
    (150, 150, 2, 2, 64, "query_head", 3, torch.float16),
    (130, 260, 6, 2, 96, "kv_head", 2, torch.float16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}/{c[3]}-d{c[4]}-{c[5]}-s{c[6]}-{c[7]}")
def test_kernel_candidate_scores_match_reference(case):
    seqlen_q, seqlen_k, hq, hkv, d, granularity, stride, dtype = case
    q, k, _ = qkv(1, seqlen_q, seqlen_k, hq, hkv, d, dtype, seed=3)
    n_sel = hq if granularity == "query_head" else hkv
    g = torch.Generator().manual_seed(5)
    # Random ascending candidate sets of different sizes, padded with seqlen_k.
    kmax = 40
    cand = torch.full((1, n_sel, 1, kmax), seqlen_k, dtype=torch.int32)
    count = torch.zeros((1, n_sel, 1), dtype=torch.int32)
    for h in range(n_sel):
        n = int(torch.randint(1, kmax + 1, (1,), generator=g))
        cols = torch.randperm(seqlen_k, generator=g)[:n].sort().values
        cand[0, h, 0, :n] = cols.to(torch.int32)
        count[0, h, 0] = n
    cand, count = cand.to(DEVICE), count.to(DEVICE)
    window = torch.tensor([7 + 5 * h for h in range(hq)], dtype=torch.int32, device=DEVICE)
    kw = {"q_per_sel": hq // n_sel, "scale": d ** -0.5, "block_m": 32, "m_stride": stride}
    got = rescore_candidates(q, k, cand, count, window, **kw)
    want = rescore_ref(q, k, cand, count, window, **kw)
    assert got.shape == want.shape == (1, n_sel, kmax)
    assert want.sum() > 0
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    # Padding entries score exactly 0.
    pad = torch.arange(kmax, device=DEVICE).view(1, 1, -1) >= count.view(1, n_sel, 1)
    assert (got[pad] == 0).all()


@pytest.mark.parametrize("granularity", ["query_head", "kv_head"])
@pytest.mark.parametrize("stride", [1, 3])
def test_kernel_plan_matches_reference_plan(granularity, stride):
    q, k, _ = structured_qkv(1, 200, 230, 4, 2, 64, seed=2)
    q, k = q.to(DEVICE), k.to(DEVICE)
    config = cfg(alpha=0.9, window_ratio=0.05, sample_ratio=0.1, gqa_granularity=granularity,
                 candidate_alpha=0.99, rescore_stride=stride)
    got, want = plan(q, k, config), plan_ref(q, k, config)
    assert torch.equal(got.col_count, want.col_count)
    assert torch.equal(got.to_dense(), want.to_dense())
    torch.testing.assert_close(got.density, want.density)


def test_ranking_rows_always_include_the_last_block():
    assert ranking_rows(100, 32, 1).tolist() == list(range(100))
    rows = ranking_rows(100, 32, 2)  # blocks 0..3; the last (3) and 1 rank
    assert rows.tolist() == list(range(32, 64)) + list(range(96, 100))
    assert ranking_rows(100, 32, 10).tolist() == list(range(96, 100))


def test_final_set_is_a_subset_of_the_candidates():
    q, k, _ = structured_qkv(1, 256, 256, 2, 2, 64, seed=4)
    base = cfg(alpha=0.9, window_ratio=0.05, sample_ratio=0.05, selection="sampled")
    candidates = plan_ref(q, k, base.model_copy(update={"alpha": 0.97}))
    rescored = plan_ref(q, k, base.model_copy(update={"selection": "rescored", "candidate_alpha": 0.97}))
    assert (rescored.col_count <= candidates.col_count).all()
    assert not (rescored.to_dense() & ~candidates.to_dense()).any()


def test_every_row_ranking_reaches_alpha_over_all_rows_where_sampling_does_not():
    """The point of rescoring: the all-row retained mass reaches alpha (with candidate_alpha 1
    the candidates are every column, so the only loss is the alpha cut itself)."""
    means = {"sampled": [], "rescored": []}
    for seed in range(3):
        q, k, _ = structured_qkv(1, 384, 384, 2, 1, 64, seed=seed)
        for selection in means:
            config = cfg(alpha=0.9, window_ratio=0.05, sample_ratio=0.05, selection=selection, candidate_alpha=1.0)
            means[selection].append(true_retained(q, k, plan_ref(q, k, config))[0])
    assert min(means["rescored"]) >= 0.9 - 1e-3
    assert sum(means["rescored"]) > sum(means["sampled"])


def test_alpha_one_rescored_is_exact():
    q, k, v = qkv(1, 120, 120, 2, 1, 64, torch.float32, seed=1)
    out = sample_attention(q, k, v, cfg(alpha=1.0, candidate_alpha=1.0, window_ratio=0.1))
    assert rel_err(out, attention_ref(q, k, v)) < 1e-5


def test_bad_rescoring_configs_are_refused_with_a_reason():
    with pytest.raises(ValidationError, match="candidate_alpha"):
        SampleAttentionConfig(selection="rescored", alpha=0.95, candidate_alpha=0.9)
    with pytest.raises(ValidationError, match="segment_rows"):
        SampleAttentionConfig(selection="rescored", block_m=32, segment_rows=64)
    with pytest.raises(ValidationError):
        SampleAttentionConfig(selection="everything")
    with pytest.raises(ValidationError):
        SampleAttentionConfig(rescore_stride=0)


def test_a_layer_alpha_above_candidate_alpha_keeps_the_candidate_share():
    from sampleattn import ModelAttentionProfile
    from sampleattn.config import LayerOverride

    base = SampleAttentionConfig(selection="rescored", alpha=0.85, candidate_alpha=0.925)  # share 0.5
    profile = ModelAttentionProfile(config=base, layers={1: LayerOverride(alpha=0.99), 2: LayerOverride(alpha=0.5)})
    raised = profile.layer_config(1)
    assert raised.alpha == 0.99 and raised.selection.candidate_alpha == pytest.approx(0.995)
    assert profile.layer_config(2).selection.candidate_alpha == 0.925  # never below the profile's
    # and the layer plans (the candidates at 0.995 reach its alpha)
    q, k, _ = structured_qkv(1, 256, 256, 2, 1, 64, seed=5)
    rescored = plan_ref(q, k, raised.model_copy(update={"dense_below": 0, "block_m": 32}))
    assert rescored.mean_density > 0


def test_dense_path_with_lse_runs_no_rescoring(monkeypatch):
    import sampleattn.reference as reference

    calls = []
    real = reference.rescore_ref
    monkeypatch.setattr(reference, "rescore_ref", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = qkv(1, 96, 96, 2, 1, 64, torch.float32, seed=2)
    config = SampleAttentionConfig(selection="rescored", dense_below=10**6, block_m=32)
    out, lse = sample_attention(q, k, v, config, return_lse=True, backend="torch")
    assert calls == []
    assert rel_err(out, attention_ref(q, k, v)) < 1e-5


def test_rescoring_kernel_refuses_bad_candidate_tensors():
    q, k, _ = qkv(1, 64, 64, 2, 1, 64, torch.float32)
    window = torch.tensor([8, 8], dtype=torch.int32, device=DEVICE)
    cand = torch.zeros(1, 2, 1, 4, dtype=torch.int64, device=DEVICE)
    count = torch.ones(1, 2, 1, dtype=torch.int32, device=DEVICE)
    kw = {"q_per_sel": 1, "scale": 0.125, "block_m": 32, "m_stride": 1}
    with pytest.raises(ValueError, match="int32"):
        rescore_candidates(q, k, cand, count, window, **kw)
    with pytest.raises(ValueError, match="one column set per head"):
        rescore_candidates(q, k, cand.to(torch.int32).view(1, 2, 2, 2), count, window, **kw)
