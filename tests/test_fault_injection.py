"""Bad input never gives a silent wrong answer: each case either gives what dense attention gives
or fails with a message that says what to do.

Non-finite values in q and k (kernels under the interpreter on the CPU, and the reference plan),
gradients through the sparse path, head dims the kernels lack, layer and head indices, and a
calibration capture killed midway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from sampleattn import (
    HeadOverride, LayerOverride, ModelAttentionProfile, SampleAttention, SampleAttentionConfig,
    dense_attention, plan, sample_attention,
)
from sampleattn.geometry import Geometry
from sampleattn.reference import attention_ref, plan_ref

from kernel_helpers import qkv, rel_err

SEQLEN, HQ, HKV, D = 256, 2, 1, 64


def cfg(**kw):
    kw.setdefault("dense_below", 0)
    kw.setdefault("block_m", 32)
    kw.setdefault("alpha", 0.9)
    kw.setdefault("window_ratio", 0.1)
    kw.setdefault("sample_ratio", 0.2)
    return SampleAttentionConfig(**kw)


def planner(backend):
    return plan if backend == "triton" else plan_ref


def outside_window_probs(q, k, row, head, window):
    """(Sk,) the dense softmax of query ``row`` of ``head`` on the keys left of its window,
    computed here from scratch (an oracle independent of the plan code)."""
    s = (q[0, row, head].cpu().double() @ k[0, :, head // (HQ // HKV)].cpu().double().T) / D ** 0.5
    j = torch.arange(k.shape[1])
    p = torch.softmax(s.masked_fill(j > row, float("-inf")), dim=0)
    return torch.where(j <= row - window, p, 0.0)


# -- non-finite values in the inputs --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_nonfinite_sampled_row_is_left_out_of_the_estimate(backend, value):
    q, k, v = qkv(1, SEQLEN, SEQLEN, HQ, HKV, D, torch.float32, seed=3)
    config = cfg()
    clean = planner(backend)(q, k, config, keep_scores=True)
    bad_row = int(clean.sampled_rows[-5])
    q_bad = q.clone()
    q_bad[0, bad_row, 0, 7] = value
    bad = planner(backend)(q_bad, k, config, keep_scores=True)

    # The row is counted as left out, for head 0 only.
    assert bad.nonfinite_rows.tolist() == [[1, 0]]
    assert clean.nonfinite_rows.tolist() == [[0, 0]]
    # It adds nothing: the scores are the clean scores less exactly that row's probabilities.
    window = int(clean.window[0])
    expected = clean.scores[0, 0, 0].double().cpu() - outside_window_probs(q, k, bad_row, 0, window)
    assert torch.isfinite(bad.scores).all()
    torch.testing.assert_close(bad.scores[0, 0, 0].double().cpu(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bad.scores[0, 1], clean.scores[0, 1])  # the other head: unchanged
    # The reports are over the rows left: finite, and alpha is met on average.
    assert torch.isfinite(bad.retained_mean).all() and torch.isfinite(bad.retained_min).all()
    assert float(bad.retained_mean.min()) >= 0.9 - 1e-4
    # The selection stays about what it was (dropping one row of 52 moves it little), where
    # before the NaN collapsed it to one column.
    assert abs(int(bad.col_count[0, 0, 0]) - int(clean.col_count[0, 0, 0])) <= 0.2 * int(clean.col_count[0, 0, 0])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_nan_query_row_spoils_only_its_own_output(backend):
    q, k, v = qkv(1, SEQLEN, SEQLEN, HQ, HKV, D, torch.float32, seed=3)
    config = cfg()
    clean_out = sample_attention(q, k, v, config, backend=backend)
    bad_row = int(plan(q, k, config).sampled_rows[-5])
    q_bad = q.clone()
    q_bad[0, bad_row, 0, 0] = float("nan")
    out, lse = sample_attention(q_bad, k, v, config, return_lse=True, backend=backend)

    nan_rows = torch.isnan(out).any(dim=-1).nonzero().tolist()
    assert nan_rows == [[0, bad_row, 0]]  # where dense attention puts NaN, and nowhere else
    assert torch.isnan(lse[0, 0, bad_row])  # NaN, not the -inf of a row that sees no key
    assert torch.isfinite(lse).sum() == lse.numel() - 1
    # The other rows are as accurate as without the NaN (before: relative error 0.16 -> 1.09).
    ref = attention_ref(q, k, v)
    others = [i for i in range(SEQLEN) if i != bad_row]
    clean_err = rel_err(clean_out[:, others, 0], ref[:, others, 0])
    assert rel_err(out[:, others, 0], ref[:, others, 0]) <= clean_err + 0.03


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_nonfinite_key_spoils_only_the_rows_that_keep_it(backend):
    q, k, v = qkv(1, SEQLEN, SEQLEN, HQ, HKV, D, torch.float32, seed=4)
    config = cfg()
    bad_key = 100
    k_bad = k.clone()
    k_bad[0, bad_key, 0, 3] = float("nan")
    out, sparse_plan = sample_attention(q, k_bad, v, config, return_plan=True, backend=backend)
    dense = attention_ref(q, k_bad, v)

    # Dense attention (which keeps NaN) puts NaN in every row that sees the key ...
    dense_nan = torch.isnan(dense).any(dim=-1)
    assert dense_nan[0, bad_key:].all() and not dense_nan[0, :bad_key].any()
    # ... the sparse output only in rows whose mask keeps it, a subset.
    sparse_nan = torch.isnan(out).any(dim=-1)
    keeps = sparse_plan.to_dense()[0, :, :, bad_key].T.to(sparse_nan.device)  # (Sq, Hq)
    assert torch.equal(sparse_nan[0], keeps)
    assert not (sparse_nan & ~dense_nan).any()
    # Every sampled row that sees the key was left out; the key's column score is 0, never NaN.
    seen = (sparse_plan.sampled_rows >= bad_key).sum().item()
    assert sparse_plan.nonfinite_rows.tolist() == [[seen, seen]]
    with_scores = planner(backend)(q, k_bad, config, keep_scores=True)
    assert torch.isfinite(with_scores.scores).all()
    assert (with_scores.scores[..., bad_key] == 0).all()


def test_kernel_and_reference_plans_agree_on_nonfinite_inputs():
    q, k, _ = qkv(2, 200, 200, 4, 2, 64, torch.float32, seed=5)
    config = cfg(gqa_granularity="kv_head")
    rows = plan_ref(q, k, config).sampled_rows
    q[0, int(rows[3]), 1, 0] = float("nan")
    q[1, int(rows[-1]), 2, 5] = float("-inf")
    k[1, 150, 0, 1] = float("inf")
    fast = plan(q, k, config, keep_scores=True)
    slow = plan_ref(q, k, config, keep_scores=True)
    assert torch.equal(fast.nonfinite_rows, slow.nonfinite_rows)
    assert int(fast.nonfinite_rows.sum()) > 2
    assert torch.isfinite(fast.scores).all()
    torch.testing.assert_close(fast.scores, slow.scores, atol=1e-5, rtol=1e-4)
    assert (fast.col_count - slow.col_count).abs().max() <= 1
    torch.testing.assert_close(fast.retained_mean, slow.retained_mean, atol=1e-4, rtol=0)


def test_reference_keeps_nan_and_gives_zero_for_a_row_without_keys():
    q, k, v = qkv(1, 8, 8, 2, 2, 64, torch.float32)
    q_bad = q.clone()
    q_bad[0, 5, 1, 0] = float("nan")
    out, lse = attention_ref(q_bad, k, v, return_lse=True)
    assert torch.isnan(out[0, 5, 1]).all() and torch.isnan(lse[0, 1, 5])  # before: 0, a wrong answer
    assert torch.isfinite(out[0, :, 0]).all() and torch.isfinite(out[0, :5, 1]).all()
    # A row with no visible key (masked out entirely) gives 0 and lse -inf: the convention.
    mask = torch.ones(8, 8, dtype=torch.bool, device=q.device)
    mask[2] = False
    out, lse = attention_ref(q, k, v, mask=mask, return_lse=True)
    assert (out[0, 2] == 0).all() and (lse[..., 2] == float("-inf")).all()
    assert torch.isfinite(out).all()


def test_plan_reports_nonfinite_rows_on_clean_inputs_too():
    q, k, _ = qkv(1, 97, 97, 2, 2, 64, torch.float32)
    for make in (plan, plan_ref):
        p = make(q, k, cfg(), reports=False)
        assert p.nonfinite_rows.shape == (1, 2) and int(p.nonfinite_rows.sum()) == 0


# -- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_the_sparse_path_refuses_to_detach_gradients(backend):
    q, k, v = qkv(1, 64, 64, 2, 1, 64, torch.float32)
    q.requires_grad_(True)
    config = cfg(dense_below=64)
    with pytest.raises(ValueError, match=r"inference-only.*torch\.no_grad\(\).*dense attention"):
        sample_attention(q, k, v, config, backend=backend)
    with pytest.raises(ValueError, match="inference-only"):
        sample_attention(q[:, :32], k[:, :32], v[:, :32], config, return_lse=True, backend=backend)
    with torch.no_grad():
        assert sample_attention(q, k, v, config, backend=backend).shape == q.shape
    with torch.inference_mode():
        assert sample_attention(q, k, v, config, backend=backend).shape == q.shape
    # Below dense_below the dense path gives gradients, as before.
    out = sample_attention(q[:, :32], k[:, :32], v[:, :32], config, backend=backend)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


# -- head dims ------------------------------------------------------------------------------------


def test_head_dim_80_runs_dense_and_on_the_torch_backend_but_not_in_the_kernels():
    q, k, v = qkv(1, 64, 64, 2, 1, 80, torch.float32)
    ref = attention_ref(q, k, v)
    assert rel_err(dense_attention(q, k, v), ref) < 1e-5
    assert rel_err(sample_attention(q, k, v, SampleAttentionConfig()), ref) < 1e-5  # below dense_below
    exact = cfg(alpha=1.0)  # every column: exact through the torch backend's plan and mask
    assert rel_err(sample_attention(q, k, v, exact, backend="torch"), ref) < 1e-5
    with pytest.raises(ValueError, match=re.escape("head dim 80 is not supported by the Triton kernels, "
                                                   "which are built for head dims 64, 96, 128, 256")):
        sample_attention(q, k, v, cfg(alpha=0.9), backend="triton")  # a sparse call (alpha 1 runs SDPA)
    with pytest.raises(ValueError, match="head dim 80"):
        plan(q, k, exact)


# -- layer and head indices -----------------------------------------------------------------------


def _profile():
    return ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9),
                                 layers={1: LayerOverride(alpha=0.99, heads={1: HeadOverride(window_ratio=0.5)})})


@pytest.mark.parametrize("as_custom_op", [False, True])
@pytest.mark.parametrize("layer, message", [(-1, "negative"), ("1", "must be an int"), (True, "must be an int"),
                                            (1.0, "must be an int")], ids=["negative", "str", "bool", "float"])
def test_a_layer_index_that_names_no_layer_is_refused(as_custom_op, layer, message):
    q, k, v = qkv(1, 32, 32, 2, 1, 64, torch.float32)
    attn = SampleAttention(_profile(), as_custom_op=as_custom_op)
    with pytest.raises(ValueError, match=message):
        attn(q, k, v, layer=layer)
    with pytest.raises(ValueError, match=message):
        attn.config_for(layer)


def test_layer_range_is_checked_against_the_geometry_when_known():
    q, k, v = qkv(1, 32, 32, 2, 1, 64, torch.float32)
    free = SampleAttention(_profile())
    assert free.config_for(99) == free.profile.config  # no geometry: the global config
    assert free(q, k, v, layer=99).shape == q.shape
    bound = SampleAttention(_profile(), geometry=Geometry(num_layers=4, num_q_heads=2, num_kv_heads=1, head_dim=64))
    with pytest.raises(ValueError, match="out of range for a model of 4 layers"):
        bound(q, k, v, layer=4)
    assert bound(q, k, v, layer=3).shape == q.shape


def test_a_head_override_beyond_the_call_is_refused_at_every_length():
    q, k, v = qkv(1, 32, 32, 1, 1, 64, torch.float32)  # one query head; the profile overrides head 1
    attn = SampleAttention(_profile())
    assert attn(q, k, v, layer=0).shape == q.shape  # layer 0 has no head override
    for config in (SampleAttentionConfig(), cfg()):  # dense (below dense_below) and sparse
        with pytest.raises(ValueError, match=r"names head 1, but the call has 1 query heads"):
            sample_attention(q, k, v, config, heads={1: HeadOverride(alpha=0.5)})
    with pytest.raises(ValueError, match="names head 1"):
        attn(q, k, v, layer=1)


# -- calibration cache: a capture killed midway ---------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from sampleattn.models.calibration import temp_folder_for
tmp = temp_folder_for(Path(sys.argv[1]))
tmp.mkdir(parents=True)
(tmp / "layer_000.safetensors").write_bytes(b"partial")
print(tmp, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_captures_temporary_folder_is_removed_on_the_next_start(tmp_path):
    from sampleattn.models.calibration import STALE_TEMP_SECONDS, CalibrationCache, temp_folder_for

    root = tmp_path / "calibration"
    entry = root / "model" / "L128_group" / "sample_0000"
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(entry)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL
    killed = root / "model" / "L128_group" / child.stdout.strip().rpartition("/")[2]
    assert killed.is_dir()
    live = temp_folder_for(entry)  # this process's own write in progress: kept
    live.mkdir()
    old = entry.parent / ".tmp-sample_0001-1234-abcd1234"  # an old name without a host, a day old
    old.mkdir()
    os.utime(old, (time.time() - STALE_TEMP_SECONDS - 60,) * 2)

    cache = CalibrationCache(root)
    assert not killed.exists() and not old.exists()
    assert live.is_dir()
    assert cache.entries() == []


def test_a_capture_that_fails_midway_leaves_no_entry(smollm2, essays, tmp_path):
    from sampleattn.models.calibration import CalibrationCache

    model, tokenizer = smollm2
    cache = CalibrationCache(tmp_path / "calibration")

    def fail(module, args, output):
        raise RuntimeError("simulated failure after three layers were written")

    handle = model.model.layers[3].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="simulated failure"):
            cache.get_or_capture(model, tokenizer, text=essays, length=64, sample=0)
    finally:
        handle.remove()
    key = cache.key_for(model, text=essays, length=64, sample=0)
    assert not cache.has(key) and not cache.path(key).exists()
    assert cache.entries() == []
    assert not list(cache.root.glob("**/.tmp-*"))  # its temporary folder is gone too
    # The next capture of the same sample completes.
    sample = cache.get_or_capture(model, tokenizer, text=essays, length=64, sample=0)
    assert sample.layers == list(range(30)) and cache.has(key)
