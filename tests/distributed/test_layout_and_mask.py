"""The pieces of context parallelism that need no process group: layouts, the keys a rank needs,
the log-sum-exp merge, and a rank's stage 3 (the kernel under TRITON_INTERPRET=1 on the CPU)."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig
from sampleattn.distributed import SequenceLayout, join_sequence, split_sequence
from sampleattn.distributed.local_mask import LocalMask, merge_by_lse
from sampleattn.distributed.testing import stage3_of_every_rank
from sampleattn.reference import attention_ref, plan_ref, sparse_attention_ref
from sampleattn.rules import BlockRule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("world", [1, 3, 4])
def test_layout_owner_and_local_index_invert_positions(layout, world):
    spec = SequenceLayout(layout, world, 10)
    x = torch.arange(spec.seqlen).view(1, -1)
    chunks = [split_sequence(x, layout, world, r) for r in range(world)]
    assert torch.equal(join_sequence(chunks, layout), x)
    for r in range(world):
        rows = spec.positions(r)
        assert torch.equal(chunks[r].flatten(), rows)
        assert torch.equal(spec.owner(rows), torch.full_like(rows, r))
        assert torch.equal(spec.local_index(rows), torch.arange(10))
    if layout == "zigzag" and world > 1:  # the first rank holds the first and the last piece
        assert spec.ranges(0) == [(0, 5), (spec.seqlen - 5, spec.seqlen)]


def test_layouts_refuse_what_does_not_split():
    with pytest.raises(ValueError, match="does not split into 6 equal pieces"):
        split_sequence(torch.zeros(1, 100, 1, 1), "zigzag", 3, 0)
    with pytest.raises(ValueError, match="odd"):
        SequenceLayout("zigzag", 2, 7)
    with pytest.raises(ValueError, match="choose 'contiguous' or 'zigzag'"):
        SequenceLayout("striped", 2, 8)


def _block_plan():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 150, h, 64, generator=g) for h in (4, 2, 2))
    config = SampleAttentionConfig(alpha=0.8, window_ratio=0.1, sample_ratio=0.2, dense_below=0, block_m=32,
                                   selection=BlockRule(beta=0.7, key_block=16, stripes=True))
    return q, k, v, plan_ref(q, k, config, reports=False)


def test_needed_keys_hold_every_key_the_rows_keep():
    q, k, _, plan = _block_plan()
    positions = torch.arange(40, 150)  # a chunk that starts inside a query block and a key block
    n_qb = plan.blocks.blk_idx.shape[2]
    mask = LocalMask.from_plan(plan, positions, torch.arange(n_qb), plan.blocks)
    dense = plan.to_dense()
    need = mask.needed_keys(2, 150)
    for kv in range(2):  # every key a row of the chunk keeps is among the needed keys
        kept = dense[0, 2 * kv:2 * kv + 2, 40:].any(dim=(0, 1))
        assert torch.equal(need[0, kv] | kept, need[0, kv])
        assert need[0, kv, 40:].all()  # the chunk's own window bands reach its last row


def test_merge_by_lse_of_two_key_sets_is_attention_over_both():
    q, k, v, plan = _block_plan()
    split = torch.arange(150) < 70
    mask = plan.to_dense()
    out_a, lse_a = attention_ref(q, k, v, scale=0.125, mask=mask & split, return_lse=True)
    out_b, lse_b = attention_ref(q, k, v, scale=0.125, mask=mask & ~split, return_lse=True)
    out, lse = merge_by_lse(out_a, lse_a, out_b, lse_b)
    ref, ref_lse = attention_ref(q, k, v, scale=0.125, mask=mask, return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


# (rule, layout, world, backend, dtype): chunk boundaries inside query blocks (32 rows) and key
# blocks (16 keys), several column segments, both layouts, GQA 2
STAGE3_CASES = [
    ("block-stripes", "contiguous", 3, "triton", torch.float32),
    ("block", "zigzag", 2, "triton", torch.float16),
    ("segments", "zigzag", 3, "triton", torch.float32),
    ("sampled", "contiguous", 2, "triton", torch.float16),
    ("block-stripes", "zigzag", 3, "torch", torch.float32),
]
STAGE3_CONFIGS = {
    "block-stripes": dict(alpha=0.8, gqa_granularity="kv_head", selection=BlockRule(beta=0.7, key_block=16,
                                                                                    stripes=True)),
    "block": dict(selection=BlockRule(beta=0.8, key_block=16)),
    "segments": dict(alpha=0.9, segment_rows=64),
    "sampled": dict(alpha=0.9),
}


@pytest.mark.parametrize("case", STAGE3_CASES, ids=lambda c: "-".join(map(str, c[:4])) + f"-{str(c[4])[6:]}")
def test_a_ranks_stage3_is_the_plans_attention_over_its_rows(case):
    """Stage 3 of every rank (own keys, then the fetched ones), with the single-process plan, equals
    attention under that plan's mask on the rank's rows."""
    name, layout, world, backend, dtype = case
    g = torch.Generator().manual_seed(world)
    q, k, v = (torch.randn(1, 180, h, 64, generator=g).to(DEVICE, dtype) for h in (4, 2, 2))
    config = SampleAttentionConfig(window_ratio=0.1, sample_ratio=0.2, dense_below=0, block_m=32, block_n=16,
                                   **STAGE3_CONFIGS[name])
    plan = plan_ref(q.float(), k.float(), config, reports=False)
    assert (plan.blocks is not None) == name.startswith("block") and (plan.n_segments > 1) == (name == "segments")
    out, lse = stage3_of_every_rank(q, k, v, plan, config, layout=layout, world=world, backend=backend)
    ref, ref_lse = sparse_attention_ref(q.float(), k.float(), v.float(), plan, return_lse=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, atol=tol, rtol=tol)


def test_rules_without_a_context_parallel_form_are_refused():
    """The rescored rule, a block rule that scores one row in a few (a chunk boundary inside a
    query block would change which rows score) and dense heads are refused with what to use
    instead."""
    from sampleattn.distributed.api import check_config_has_cp_form, check_rule_has_cp_form
    from sampleattn.rules import RescoredRule

    check_rule_has_cp_form(BlockRule(share_power=2))  # every row scored: reproduced exactly
    with pytest.raises(ValueError, match="use 'sampled' or 'block'"):
        check_rule_has_cp_form(RescoredRule())
    with pytest.raises(ValueError, match="use row_stride=1 under context parallelism"):
        check_rule_has_cp_form(BlockRule(row_stride=2))
    with pytest.raises(ValueError, match="leave dense_above=1.0 here"):
        check_config_has_cp_form(SampleAttentionConfig(selection=BlockRule(), dense_above=0.7))
