"""The peers of `sampleattn.bench.peers` (MInference's vertical-slash, FlexPrefill): their Triton
kernels (under TRITON_INTERPRET=1 on the CPU) against masked attention in PyTorch, their
estimates against masks built from scratch by the definitions, and the peers benchmark's dry run.

Inputs are the structured generator's (sinks, stripes, a local window), small, at lengths that are
not multiples of the blocks; fp32 and fp16 (the interpreter gets bf16 wrong).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from sampleattn.bench import peers_bench
from sampleattn.bench.peers import (flexprefill_attention, flexprefill_plan, vertical_slash_attention,
                                    vertical_slash_plan)
from sampleattn.bench.peers._scores import diagonal_sums
from sampleattn.bench.peers.flexprefill import block_mask_layout
from sampleattn.bench.peers.kernels import block_sparse_fwd
from sampleattn.bench.peers.reference import (flexprefill_mask_ref, masked_attention_ref, masked_attention_rows,
                                              vertical_slash_mask_ref)
from sampleattn.bench.peers.vertical_slash import vertical_slash_params
from sampleattn.reference import attention_ref, causal_mask, relative_error
from sampleattn.synthetic import structured_qkv

from kernel_helpers import DEVICE

#: Small budgets for 200-400 tokens; the kernels' GPU tiles (64-row blocks, 64-key tiles).
VS_SMALL = dict(vertical_size=12, slash_size=6, last_q=32, sink_columns=2, local_diagonals=3)


def _inputs(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype=torch.float32, seed=1):
    return structured_qkv(batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, density=0.02, seed=seed,
                          dtype=dtype, device=DEVICE)


def _check_against(out, q, k, v, mask):
    """The kernel's output against masked attention in fp32; at half precision within 2x (plus a
    floor) of the same computation in PyTorch at that dtype."""
    golden = masked_attention_ref(q.double(), k.double(), v.double(), mask)
    assert not torch.isnan(out).any()
    err = relative_error(out, golden)
    if q.dtype == torch.float32:
        assert err < 1e-5, err
    else:
        baseline = relative_error(attention_ref(q, k, v, mask=mask, upcast=False), golden)
        assert err <= 2 * baseline + 1e-3, (err, baseline)


def _mask_density(mask, seqlen_q, seqlen_k):
    visible = causal_mask(seqlen_q, seqlen_k).sum().item()
    return mask.sum().item() / (visible * mask.shape[0] * mask.shape[1])


# (batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, head_dim, dtype): GQA 4 and 1, d64 and d128,
# batch 2 with seqlen_q < seqlen_k (chunked prefill), an fp16 case.
VS_CASES = [
    (1, 300, 300, 4, 1, 64, torch.float32),
    (2, 200, 350, 2, 2, 128, torch.float32),
    (1, 261, 261, 2, 1, 128, torch.float16),
]


@pytest.mark.parametrize("case", VS_CASES, ids=lambda c: "b{}-q{}-k{}-h{}/{}-d{}-{}".format(*c[:6], str(c[6])[6:]))
def test_vertical_slash_kernel_and_estimate_match_the_definition(case):
    *shape, dtype = case
    batch, seqlen_q, seqlen_k = shape[:3]
    q, k, v = _inputs(*shape, dtype=dtype)
    plan = vertical_slash_plan(q, k, **VS_SMALL)
    out, info = vertical_slash_attention(q, k, v, **VS_SMALL)
    mask = plan.to_dense()
    if dtype == torch.float32:  # at half precision the two estimates' products may round apart
        assert torch.equal(mask, vertical_slash_mask_ref(q, k, **VS_SMALL))
    assert 0.05 < info["density"] < 0.6  # sparse, not empty, not everything
    assert info["density"] == pytest.approx(_mask_density(mask, seqlen_q, seqlen_k), abs=1e-9)
    _check_against(out, q, k, v, mask)
    # The kernel's ranges are exactly the cover's: the tiles of each block, expanded, give the
    # keys whose distance from the block start is covered.
    plan = dataclasses.replace(plan, **{f.name: getattr(plan, f.name).cpu() for f in dataclasses.fields(plan)
                                        if isinstance(getattr(plan, f.name), torch.Tensor)})
    starts = plan.block_starts()
    for m in range(len(starts)):
        s = int(starts[m])
        first, count = int(plan.tile_first[0, 0, m]), int(plan.tile_count[0, 0])
        keys = torch.zeros(seqlen_k + plan.block_m, dtype=torch.bool)
        for t in range(first, count):
            lo = s - int(plan.tile_off[0, 0, t])
            assert 0 < int(plan.tile_len[0, 0, t]) <= plan.block_n
            keys[max(lo, 0):lo + int(plan.tile_len[0, 0, t])] = True
        j = torch.arange(min(s + plan.block_m, seqlen_k))
        assert torch.equal(keys[: len(j)], plan.cover[0, 0, (s - j + plan.block_m - 1)].bool())


def test_vertical_slash_keeping_everything_is_exact_attention():
    q, k, v = _inputs(1, 230, 230, 4, 2, 64)
    out, info = vertical_slash_attention(q, k, v, vertical_size=230, slash_size=8, block_m=32, block_n=32,
                                         time_stages=True)
    assert info["density"] == 1.0 and info["estimate_ms"] > 0 and info["attention_ms"] > 0
    assert relative_error(out, attention_ref(q.double(), k.double(), v.double())) < 1e-5
    out, info = vertical_slash_attention(q, k, v, vertical_size=30, slash_size=230, block_m=32, block_n=32)
    assert info["density"] == 1.0
    assert relative_error(out, attention_ref(q.double(), k.double(), v.double())) < 1e-5


def test_diagonal_sums_line_rows_up_on_their_offsets():
    p = torch.rand(2, 3, 5, 17)
    out = diagonal_sums(p)
    for r in range(5):
        pos = 17 - 5 + r
        for delta in (0, 3, pos):
            assert out[1, 2, delta] >= p[1, 2, r, pos - delta]
    expected = torch.zeros(17)
    for r in range(5):
        pos = 17 - 5 + r
        expected[: pos + 1] += p[0, 1, r, : pos + 1].flip(0)
    assert torch.allclose(out[0, 1], expected)


# FlexPrefill: (batch, seqlen, nheads_q, nheads_kv, head_dim, dtype, params). tau 1 makes every
# head query-aware, tau 0 none; block 128 with a small min_budget runs the GPU's 128x128 blocks.
FP_CASES = [
    (1, 300, 4, 1, 64, torch.float32, dict(block_size=32, min_budget=32, tau=1.0)),
    (2, 257, 2, 2, 128, torch.float32, dict(block_size=32, min_budget=32, tau=0.0)),
    (1, 400, 2, 1, 128, torch.float32, dict(block_size=128, min_budget=128, tau=0.1, gamma=0.8)),
    (1, 333, 2, 1, 64, torch.float16, dict(block_size=64, min_budget=64, tau=0.1)),
]


@pytest.mark.parametrize("case", FP_CASES, ids=lambda c: "b{}-s{}-h{}/{}-d{}".format(*c[:5]) + f"-bs{c[6]['block_size']}")
def test_flexprefill_kernel_and_estimate_match_the_definition(case):
    *shape, dtype, params = case
    batch, seqlen, nheads_q, nheads_kv, head_dim = shape
    q, k, v = _inputs(batch, seqlen, seqlen, nheads_q, nheads_kv, head_dim, dtype=dtype)
    plan = flexprefill_plan(q, k, **params)
    out, info = flexprefill_attention(q, k, v, **params)
    assert not info["dense"]
    mask = plan.to_dense()
    if dtype == torch.float32:
        assert torch.equal(mask, flexprefill_mask_ref(q, k, **params))
    if params["tau"] in (0.0, 1.0):
        assert info["query_aware_share"] == params["tau"]
    assert info["density"] < 1.0
    assert info["density"] == pytest.approx(_mask_density(mask, seqlen, seqlen), abs=1e-9)
    _check_against(out, q, k, v, mask)


def test_block_sparse_kernel_on_arbitrary_blocks_and_chunked_prefill():
    """The kernel alone: random block lists (some query blocks with none: output 0), sub-tiles of
    the blocks, seqlen_q < seqlen_k (bottom-right)."""
    q, k, v = _inputs(2, 150, 290, 4, 2, 64)
    block = 64
    nq, nk = -(-150 // block), -(-290 // block)
    gen = torch.Generator().manual_seed(3)
    blocks = (torch.rand(2, 4, nq, nk, generator=gen) < 0.5).to(DEVICE)
    blocks[0, 1, 1] = False  # a query block with no key block
    kv_idx, kv_count = block_mask_layout(blocks)
    out = block_sparse_fwd(q, k, v, kv_idx, kv_count, q_block=block, key_block=block, block_m=32, block_n=32)
    j = torch.arange(290, device=DEVICE)
    rows = torch.arange(150, device=DEVICE)
    mask = blocks[:, :, rows // block][..., j // block] & causal_mask(150, 290, DEVICE)
    _check_against(out, q, k, v, mask)
    assert torch.count_nonzero(out[0, 64:128, 1]) == 0


def test_flexprefill_keeping_everything_is_exact_attention_and_short_inputs_run_dense():
    q, k, v = _inputs(1, 300, 300, 2, 1, 64)
    out, info = flexprefill_attention(q, k, v, gamma=1.0, tau=0.0, block_size=32, min_budget=32)
    assert not info["dense"] and info["density"] == 1.0
    assert relative_error(out, attention_ref(q.double(), k.double(), v.double())) < 1e-5
    out, info = flexprefill_attention(q[:, :256], k[:, :256], v[:, :256])  # at most 2 blocks / min_budget: dense
    assert info["dense"] and info["density"] == 1.0
    assert relative_error(out, attention_ref(q[:, :256].double(), k[:, :256].double(), v[:, :256].double())) < 1e-5


def test_peers_refuse_what_they_do_not_support():
    q, k, v = _inputs(1, 100, 200, 2, 1, 64)
    with pytest.raises(ValueError, match="seqlen_q == seqlen_k"):
        flexprefill_plan(q, k)
    with pytest.raises(ValueError, match="unknown vertical-slash preset"):
        vertical_slash_params("fast")
    with pytest.raises(ValueError, match="unknown FlexPrefill parameters"):
        flexprefill_plan(q, q, alpha=0.9)
    with pytest.raises(ValueError, match="block_size"):
        flexprefill_plan(q, q, block_size=48)
    assert vertical_slash_params("budget-x2")["slash_size"] == 2 * vertical_slash_params()["slash_size"]
    assert vertical_slash_params() == dict(vertical_size=1000, slash_size=6096, last_q=64, sink_columns=30,
                                           local_diagonals=100, block_m=64, block_n=64)


def test_masked_attention_rows_is_the_masked_oracle_on_those_rows():
    q, k, v = _inputs(1, 200, 260, 4, 2, 64)
    plan = vertical_slash_plan(q, k, **VS_SMALL)
    rows = torch.tensor([0, 63, 64, 150, 199])
    got = masked_attention_rows(q, k, v, rows, plan.mask_rows)
    full = masked_attention_ref(q, k, v, plan.to_dense())
    assert torch.allclose(got, full[:, rows].float(), atol=1e-5)


def test_peers_bench_dry_run_writes_one_row_per_method(tmp_path, capsys):
    """End to end on the CPU: cuDNN's stand-in, two peers and a method given as a plain
    (name, callable) pair, on the same seeded rows; the JSON rows and the table."""
    def dense(q, k, v):
        return attention_ref(q, k, v)

    methods = peers_bench.peer_methods() + [("dense reference", dense)]
    code = peers_bench.main(["--dry-run", "--inputs", "synthetic", "--lengths", "200", "--error-rows", "16",
                             "--methods", "vertical-slash released,flexprefill default,dense reference",
                             "--out", str(tmp_path), "--strict"], methods=methods)
    assert code == 0
    assert "peers_bench" in capsys.readouterr().err  # the progress bar over the cases, on stderr
    report = json.loads((tmp_path / "peers.json").read_text())
    assert report["env"]["torch"] and report["geometry"] == "smollm2" and not report["errors"]
    by_name = {r["method"]: r for r in report["rows"]}
    assert set(by_name) == {"sdpa cudnn", "minference vertical-slash released", "flexprefill default",
                            "dense reference"}
    for name in ("minference vertical-slash released", "flexprefill default"):
        row = by_name[name]
        assert row["check_ok"] and row["error"] < 1e-4  # at 200 tokens the default budgets keep everything
        assert row["density"] == 1.0 and row["plan_ms"] > 0 and row["attention_ms"] > 0
        assert row["speedup_vs_cudnn"] == pytest.approx(row["cudnn_ms"] / row["total_ms"])
        assert row["plan_share"] == pytest.approx(row["plan_ms"] / row["total_ms"])
        assert row["error_rows"] == 16 and "substitute" in row
    assert by_name["dense reference"]["error"] < 1e-5 and by_name["dense reference"]["density"] is None
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["method"] for line in lines] == ["sdpa cudnn", "minference vertical-slash released",
                                                             "flexprefill default", "dense reference"]
    assert all(math.isfinite(json.loads(line)["total_ms"]) for line in lines)
