"""The tile table (`sampleattn.kernels.tiles`): what every launcher launches with.

The expected values are the launches the kernels are measured and compiled with (head dims 64,
96, 128, 256; fp16, bf16, fp32; row tiles of 64 and 128), written out by hand: a change to the
table changes one of them on purpose, never by accident.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

from sampleattn.kernels import tiles
from sampleattn.kernels.tiles import launch_for

from kernel_helpers import DEVICE, hand_plan, qkv

HALF = (torch.float16, torch.bfloat16)
FP32 = (torch.float32,)
ALL = HALF + FP32

#: Stage 3: (head dims, dtypes, the caller's block_m = block_n) -> (block_m, block_n, warps, stages).
STAGE3 = [
    ((64, 96, 128), HALF, 64, (64, 64, 4, 3)),
    ((64, 96, 128), HALF, 128, (128, 128, 8, 3)),
    ((64,), FP32, 64, (64, 64, 4, 3)),
    ((64,), FP32, 128, (128, 128, 8, 3)),
    ((96, 128), FP32, 64, (64, 64, 4, 2)),    # fp32 at 65-128: 64-key tiles, 2 stages (shared memory)
    ((96, 128), FP32, 128, (128, 64, 8, 2)),
    ((256,), ALL, 64, (64, 64, 4, 2)),        # 256-wide heads: 64 x 64 tiles (registers)
    ((256,), ALL, 128, (64, 64, 4, 2)),
]


def _cases(table):
    return [(d, dtype, tile, want) for dims, dtypes, tile, want in table for d in dims for dtype in dtypes]


def test_stage3_table_covers_every_head_dim_dtype_and_tile_once():
    keys = [(d, dtype, tile) for d, dtype, tile, _ in _cases(STAGE3)]
    assert sorted(keys, key=str) == sorted(((d, t, m) for d in (64, 96, 128, 256) for t in ALL for m in (64, 128)),
                                           key=str)


@pytest.mark.parametrize("head_dim,dtype,tile,want", _cases(STAGE3))
def test_stage3_launch(head_dim, dtype, tile, want):
    got = launch_for("sparse_attention", head_dim=head_dim, dtype=dtype, block_m=tile, block_n=tile)
    assert (got.block_m, got.block_n, got.num_warps, got.num_stages) == want
    if tile == 64:  # the launcher's default tile when the caller names none
        assert launch_for("sparse_attention", head_dim=head_dim, dtype=dtype) == got


@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("block_m", [64, 128])
def test_rescoring_launch_and_ranking_block(head_dim, block_m):
    from sampleattn.rescoring import ranking_block

    rows = 64 if head_dim > 128 else block_m
    assert ranking_block(block_m, head_dim) == rows
    for dtype in ALL:
        got = launch_for("rescore_candidates", head_dim=head_dim, dtype=dtype, block_m=rows)
        assert (got.block_m, got.block_n, got.block_c, got.num_warps, got.num_stages) == \
            (rows, 64, 64, 4 if rows == 64 else 8, 2)


def test_rescoring_refuses_row_tiles_the_head_dim_does_not_allow():
    from sampleattn.kernels import rescore_candidates

    q, k, _ = qkv(1, 128, 128, 2, 1, 256, torch.float16)
    cand = torch.zeros(1, 2, 1, 16, dtype=torch.int32, device=DEVICE)
    count = torch.ones(1, 2, 1, dtype=torch.int32, device=DEVICE)
    window = torch.tensor([8, 8], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim=256 needs block_m <= 64"):
        rescore_candidates(q, k, cand, count, window, q_per_sel=1, scale=0.1, block_m=128, m_stride=1)


@pytest.mark.parametrize("block_s,q_per_kv,heads", [(16, 1, 1), (16, 4, 4), (16, 8, 8), (64, 1, 1), (64, 3, 1),
                                                    (64, 4, 2), (128, 4, 1), (256, 2, 1)])
def test_row_stats_heads_fill_a_128_row_tile(block_s, q_per_kv, heads):
    from sampleattn.kernels.sampling import row_stats_heads

    assert row_stats_heads(block_s, q_per_kv) == heads


@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("rows", [16, 64, 128])
def test_stage1_launches(head_dim, dtype, rows):
    """Row statistics: 64-key tiles and 4 warps up to 64 rows; 128-key tiles and 8 warps for 128
    rows, but 64-key tiles for fp32 at head dim 256 (shared memory). Column scores and the
    stripe mass keep their key tile and follow the rows with their warps."""
    stats = launch_for("sampled_row_stats", head_dim=head_dim, dtype=dtype, rows=rows)
    wide_keys = 64 if (head_dim, dtype) == (256, torch.float32) else 128
    assert (stats.block_n, stats.num_warps, stats.num_stages) == ((64, 4, 2) if rows <= 64 else (wide_keys, 8, 2))
    scores = launch_for("column_scores", head_dim=head_dim, dtype=dtype, rows=rows, block_n=tiles.SCORES_BLOCK_N)
    assert (scores.block_n, scores.num_warps, scores.num_stages) == (128, 4 if rows <= 64 else 8, 2)
    mass = launch_for("stripe_mass", head_dim=head_dim, dtype=dtype, rows=rows)
    assert (mass.block_n, mass.num_warps, mass.num_stages) == (64, 4 if rows <= 64 else 8, 3)


@pytest.mark.parametrize("head_dim,rows,warps", [(64, 64, 4), (64, 128, 4), (64, 256, 8), (96, 64, 4), (128, 64, 4),
                                                 (128, 128, 8), (256, 32, 4), (256, 64, 8), (256, 128, 8)])
def test_block_estimate_warps_follow_the_tile_elements(head_dim, rows, warps):
    for dtype in ALL:
        got = launch_for("block_scores", head_dim=head_dim, dtype=dtype, rows=rows)
        assert (got.block_c, got.num_warps, got.num_stages) == (64, warps, 2)


def test_block_selection_launch():
    got = launch_for("select_key_blocks")
    assert (got.block_c, got.num_warps, got.num_stages) == (1024, 4, 3)


def test_explicit_arguments_override_the_table_but_not_its_caps():
    got = launch_for("sparse_attention", head_dim=128, dtype=torch.float16, block_m=128, block_n=32, num_warps=2,
                     num_stages=4)
    assert (got.block_m, got.block_n, got.num_warps, got.num_stages) == (128, 32, 2, 4)
    got = launch_for("sparse_attention", head_dim=256, dtype=torch.float16, block_m=128, block_n=128, num_warps=8)
    assert (got.block_m, got.block_n, got.num_warps, got.num_stages) == (64, 64, 8, 2)
    got = launch_for("sampled_row_stats", head_dim=256, dtype=torch.float32, rows=128, block_n=128)
    assert got.block_n == 128  # stage 1's fp32 rule is a default, not a cap
    got = launch_for("block_scores", head_dim=128, dtype=torch.float16, rows=128, block_c=16, num_stages=3)
    assert (got.block_c, got.num_warps, got.num_stages) == (16, 8, 3)


def test_bad_questions_get_clear_errors():
    with pytest.raises(ValueError, match="no tile rule for kernel 'nope'"):
        launch_for("nope")
    with pytest.raises(ValueError, match="pass block_m or rows"):
        launch_for("column_scores", head_dim=64, dtype=torch.float16)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        tiles.operator_block_m(40)


def test_head_buckets_and_operator_tiles():
    assert [tiles.head_bucket(d) for d in (16, 64, 65, 96, 128, 129, 256)] == [64, 64, 128, 128, 128, 256, 256]
    assert [tiles.padded_head_dim(d) for d in (1, 16, 17, 64, 96, 128, 256)] == [16, 16, 32, 64, 128, 128, 256]
    assert [tiles.operator_block_m(rows) for rows in (16, 48, 64, 192, 256, 4096)] == [16, 16, 64, 64, 128, 128]


def test_the_defaults_have_one_home():
    """The operator's config, `sparse_attention` and the hand-built plans read the table's tiles."""
    from sampleattn import SampleAttentionConfig, sparse_attention
    from sampleattn.baselines import build_plan

    config = SampleAttentionConfig()
    assert (config.block_m, config.block_n) == (tiles.BLOCK_M, tiles.BLOCK_N) == (128, 128)
    assert inspect.signature(sparse_attention).parameters["block_n"].default == tiles.BLOCK_N
    assert inspect.signature(build_plan).parameters["block_m"].default == tiles.SMALL_BLOCK == 64


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="records interpreted launches (the CPU run)")
def test_stage3_launcher_launches_what_the_table_says():
    """The real launcher under the interpreter: a 256-wide head cuts 128-row tiles to 64 x 64 with
    4 warps and 2 stages; a caller's warps are kept."""
    from sampleattn.bench.triton_keys import CacheKeyRecorder
    from sampleattn.kernels import sparse_attention_fwd

    q, k, v = qkv(1, 128, 128, 2, 1, 256, torch.float16)
    plan = hand_plan(1, 128, 128, 2, 1, windows=[16, 16], columns=[[[[0, 5]], [[1]]]], segment_rows=128,
                     scale=0.0625)
    seen = []
    for num_warps in (None, 2):
        with CacheKeyRecorder() as recorder:
            sparse_attention_fwd(q, k, v, plan.col_idx, plan.window, segment_rows=128, q_per_sel=1, scale=0.0625,
                                 block_m=128, block_n=128, num_warps=num_warps)
        (launch,) = recorder.launches.values()
        seen.append((launch["constexprs"]["BLOCK_M"], launch["constexprs"]["BLOCK_N"], launch["num_warps"],
                     launch["num_stages"]))
    assert seen == [(64, 64, 4, 2), (64, 64, 2, 2)]
