"""Sparse context parallelism on gloo: world sizes 1-4 in spawned processes against the
single-process operator (same plan, same output), and failures that make every rank raise.

One process group per world size runs every case (start-up is most of the cost); the operator's
results on the whole sequence are computed once here, in the test process.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from cp_worker import case_tensors, run_cases
from sampleattn import SampleAttentionConfig, sample_attention
from sampleattn.distributed import join_sequence
from sampleattn.distributed.testing import free_port
from sampleattn.rules import BlockRule

#: divides into 2 * world pieces for every world size tested, and is no multiple of the query
#: block (64), the key block (16) or any chunk's pieces
SEQLEN = 216
COMMON = dict(window_ratio=0.1, sample_ratio=0.2, dense_below=0, block_m=64, block_n=64)
CONFIGS = {
    "sampled": SampleAttentionConfig(alpha=0.8, **COMMON),
    "sampled-kv": SampleAttentionConfig(alpha=0.9, gqa_granularity="kv_head", **COMMON),
    "block": SampleAttentionConfig(selection=BlockRule(beta=0.6, key_block=16), **COMMON),
    "block-stripes": SampleAttentionConfig(alpha=0.7, gqa_granularity="kv_head",
                                           selection=BlockRule(beta=0.7, key_block=16, stripes=True), **COMMON),
    "block-p2": SampleAttentionConfig(selection=BlockRule(beta=0.8, key_block=16, share_power=2), **COMMON),
    "block-heavy": SampleAttentionConfig(alpha=0.95, gqa_granularity="kv_head",
                                         selection=BlockRule(beta=0.7, key_block=16, stripes=True, max_stripes=5),
                                         **COMMON),
    "dense": SampleAttentionConfig(**{**COMMON, "dense_below": 1 << 20}),
}
SHAPES = {  # batch, query heads, KV heads (GQA 2:1 and MQA 4:1)
    "sampled": (2, 4, 2), "sampled-kv": (1, 4, 1), "block": (2, 4, 2), "block-stripes": (1, 4, 2), "block-p2": (1, 4, 2),
    "block-heavy": (1, 4, 2), "dense": (1, 2, 1),
}
# (config, layout, backend) per world size: every rule and layout at several world sizes, each
# world size both layouts; stage 3 and the block rule's estimate take the Triton kernels
# (interpreter) under "auto" and plain PyTorch under "torch"
RUNS = {
    1: [("sampled", "contiguous", "auto"), ("block", "zigzag", "auto"), ("dense", "contiguous", "auto")],
    2: [("sampled", "contiguous", "auto"), ("sampled-kv", "zigzag", "auto"), ("block", "zigzag", "torch"),
        ("block-stripes", "contiguous", "auto"), ("block-p2", "zigzag", "auto"), ("dense", "contiguous", "auto")],
    3: [("sampled", "zigzag", "auto"), ("sampled-kv", "contiguous", "auto"), ("block", "contiguous", "torch"),
        ("block-stripes", "zigzag", "auto"), ("block-heavy", "contiguous", "auto")],
    4: [("sampled", "contiguous", "auto"), ("sampled", "zigzag", "auto"), ("block", "contiguous", "auto"),
        ("block", "zigzag", "auto"), ("block-stripes", "zigzag", "torch")],
}
FAIL_TIMEOUT_S = 4.0


def _case(name: str, layout: str, backend: str, seed: int = 3, **extra) -> dict:
    batch, hq, hkv = SHAPES[name]
    return dict(seed=seed, batch=batch, seqlen=SEQLEN, hq=hq, hkv=hkv, d=64, layout=layout,
                config=CONFIGS[name], backend=backend, **extra)


def _world_cases(world: int) -> list[dict]:
    cases = [_case(*run) for run in RUNS[world]]
    if world > 1:  # refused and failing ranks; the failure leaves the group broken, so it comes last
        cases.append(_case("sampled", "contiguous", "auto", bad_rank=world - 1))
        cases.append(_case("sampled", "zigzag", "auto", short_rank=1))
        cases.append(_case("sampled", "contiguous", "auto", fail_rank=world - 1, timeout=FAIL_TIMEOUT_S))
    return cases


@pytest.fixture(scope="module")
def operator_results() -> dict:
    """The single-process operator on each config's whole sequence: (out, lse, plan)."""
    results = {}
    for name in CONFIGS:
        q, k, v = case_tensors(_case(name, "contiguous", "auto"))
        results[name] = sample_attention(q, k, v, CONFIGS[name], return_lse=True, return_plan=True)
    return results


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda w: f"world{w}")
def world_run(request, tmp_path_factory) -> tuple[int, list[dict], list[list[dict]]]:
    """Every case on a gloo group of ``world`` spawned ranks: (world, cases, records[case][rank])."""
    world = request.param
    out_dir = str(tmp_path_factory.mktemp(f"cp{world}"))
    cases = _world_cases(world)
    mp.spawn(run_cases, args=(world, free_port(), cases, out_dir), nprocs=world, join=True)
    records = [[torch.load(os.path.join(out_dir, f"{i}-{r}.pt")) for r in range(world)] for i in range(len(cases))]
    return world, cases, records


def _normal(cases, records):
    for case, per_rank in zip(cases, records):
        if not any(key in case for key in ("bad_rank", "short_rank", "fail_rank")):
            for record in per_rank:
                assert "error" not in record, record.get("trace")
            yield case, per_rank


def _name(case: dict) -> str:
    return next(name for name, config in CONFIGS.items() if config is case["config"] or config == case["config"])


def test_output_equals_single_process_operator(world_run, operator_results):
    world, cases, records = world_run
    for case, per_rank in _normal(cases, records):
        out_ref, lse_ref, _ = operator_results[_name(case)]
        out = join_sequence([r["out"] for r in per_rank], case["layout"])
        lse = join_sequence([r["lse"] for r in per_rank], case["layout"], dim=2)
        where = f"{_name(case)} {case['layout']} {case['backend']} world {world}"
        assert not torch.isnan(out).any(), where
        # fp32 throughout; one kernel call over every key and the ranks' calls over their own and
        # the fetched keys, merged by log-sum-exp, differ in summation order only
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5, msg=where)
        torch.testing.assert_close(lse, lse_ref, atol=2e-5, rtol=1e-5, msg=where)


def test_plan_equals_single_process_plan(world_run, operator_results):
    world, cases, records = world_run
    for case, per_rank in _normal(cases, records):
        _, _, plan = operator_results[_name(case)]
        where = f"{_name(case)} {case['layout']} {case['backend']} world {world}"
        if plan is None:  # dense attention: no plan on any rank either
            assert all("plan" not in r for r in per_rank), where
            continue
        for record in per_rank:  # every rank holds the same, complete plan
            got = record["plan"]
            assert torch.equal(got["window"], plan.window.cpu()), where
            # selections compared exactly: the fixed inputs hold no score ties at the cut-offs
            assert torch.equal(got["col_count"], plan.col_count.cpu()), where
            assert torch.equal(got["col_idx"], plan.col_idx.cpu()), where
            if plan.blocks is not None:
                assert torch.equal(got["blk_count"], plan.blocks.blk_count.cpu()), where
                assert torch.equal(got["blk_idx"], plan.blocks.blk_idx.cpu()), where
            torch.testing.assert_close(got["density"], plan.density.cpu(), msg=where)
        assert 0.1 < float(plan.density.mean()) < 0.95, f"{where}: the case should be sparse, not dense or empty"


def test_bytes_are_counted_and_below_ring_attention(world_run):
    world, cases, records = world_run
    for case, per_rank in _normal(cases, records):
        kv_bytes = 2 * case["batch"] * SEQLEN * case["hkv"] * case["d"] * 4  # k and v, fp32
        ring = kv_bytes * (world - 1) // world  # each rank forwards world - 1 chunks of k and v
        for rank, record in enumerate(per_rank):
            sent = record["bytes"]
            if world == 1:
                assert sum(sent.values()) == 0
                continue
            assert sent["input_check"] > 0
            if _name(case) == "dense":
                continue  # every earlier key is needed: ring-like traffic
            if rank < world - 1 or case["layout"] == "zigzag":  # the last contiguous chunk serves no one
                assert sent["kv_fetch"] > 0, (case["layout"], rank, sent)
            # no key travels twice to one rank, so never more than ring attention (plus the
            # all-to-all's 8-byte size to each rank)
            assert sent["kv_fetch"] <= ring + 8 * (world - 1), (_name(case), case["layout"], rank, sent, ring)
        if world > 1 and _name(case) == "sampled":  # density 0.3: most keys stay home
            total = sum(r["bytes"]["kv_fetch"] for r in per_rank)
            assert total < 0.7 * ring * world, (case["layout"], total, ring * world)


def test_bad_chunks_make_every_rank_raise_a_clear_error(world_run):
    world, cases, records = world_run
    if world == 1:
        pytest.skip("a group of one has no other rank to disagree with")
    bad = next(i for i, c in enumerate(cases) if "bad_rank" in c)
    for rank, record in enumerate(records[bad]):
        if rank == cases[bad]["bad_rank"]:
            assert "rows but k holds" in record["error"], record["error"]
        else:
            assert f"rank(s) [{world - 1}] refused their input" in record["error"], record["error"]
    short = next(i for i, c in enumerate(cases) if "short_rank" in c)
    for record in records[short]:
        assert "chunks differ in chunk rows" in record["error"], record["error"]


def test_a_failing_rank_makes_every_rank_raise_within_the_timeout(world_run):
    world, cases, records = world_run
    if world == 1:
        pytest.skip("a group of one has no other rank to wait for")
    fail = next(i for i, c in enumerate(cases) if "fail_rank" in c)
    for rank, record in enumerate(records[fail]):
        assert "error" in record, f"rank {rank} did not raise"
        if rank != cases[fail]["fail_rank"]:
            assert "ContextParallelError" in record["error"], record["error"]
            assert record["seconds"] < FAIL_TIMEOUT_S + 5.0, record["seconds"]


@pytest.mark.parametrize("max_count", [None, 6])
def test_merged_top_k_over_several_rounds_equals_the_single_process_selection(monkeypatch, max_count):
    """The ranks' merged top-k with offers of 2 columns (many rounds, each deciding a little),
    on scores with ties, with and without a limit on the columns: the columns of
    `select_columns` on the same scores (a group of one, where only the stopping rule acts)."""
    import datetime

    import torch.distributed as dist

    from sampleattn.distributed import stripes
    from sampleattn.distributed.comm import Communicator
    from sampleattn.planning import counted_pairs, prepare_plan, window_mass_from_scores
    from sampleattn.selection import select_columns

    monkeypatch.setattr(stripes, "FIRST_OFFER", 2)
    q = torch.zeros(1, 200, 4, 16)
    config = SampleAttentionConfig(alpha=0.9, window_ratio=0.1, sample_ratio=0.2, gqa_granularity="kv_head")
    setup = prepare_plan(q, q[:, :, :2], config, causal=True, scale=None, heads=None)
    n_slots = setup.rows.rows.numel()
    finite = torch.ones(1, 4, n_slots, dtype=torch.bool)
    scores = (torch.rand(1, 2, 1, 200, generator=torch.Generator().manual_seed(2)) ** 4).mul(8).round().div(8)
    _, _, n_rows = counted_pairs(setup.rows, setup.window_dev, batch=1, seqlen_q=200, seqlen_k=200, q_per_sel=2,
                                 finite=finite)
    want = select_columns(scores, window_mass_from_scores(scores, n_rows), n_rows, setup.alpha_sel_dev,
                          reach=setup.reach_dev, static=False, max_count=max_count)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        comm = Communicator(timeout=datetime.timedelta(seconds=30))
        got = stripes.select_columns_cp(setup, scores, finite, torch.arange(200), comm, max_count=max_count)
    finally:
        dist.destroy_process_group()
    assert torch.equal(got[1], want[1]) and int(want[1].min()) > 2  # more columns than one offer
    assert torch.equal(got[0], want[0])
    if max_count is not None:
        assert want[1].eq(max_count).all()
