"""The pieces of context parallelism that need no process group: layouts, the local mask, the
log-sum-exp merge."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig
from sampleattn.distributed import SequenceLayout, join_sequence, split_sequence
from sampleattn.distributed.local_mask import LocalMask, attend, merge_by_lse
from sampleattn.reference import attention_ref, plan_ref
from sampleattn.rules import BlockRule


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


def test_local_mask_is_the_plans_mask():
    q, k, _, plan = _block_plan()
    positions = torch.arange(40, 150)  # a chunk that starts inside a query block and a key block
    n_qb = plan.blocks.blk_idx.shape[2]
    mask = LocalMask.from_plan(plan, positions, torch.arange(n_qb), plan.blocks)
    dense = plan.to_dense()
    keys = torch.arange(150)
    rows = torch.arange(len(positions))
    assert torch.equal(mask.keep(0, slice(0, 4), rows, keys), dense[0, :, 40:])
    need = mask.needed_keys(2, 150)
    for kv in range(2):  # every key a row of the chunk keeps is among the needed keys
        kept = dense[0, 2 * kv:2 * kv + 2, 40:].any(dim=(0, 1))
        assert torch.equal(need[0, kv] | kept, need[0, kv])
        assert need[0, kv, 40:].all()  # the chunk's own window bands reach its last row


def test_two_key_sets_merged_by_lse_equal_attention_over_both():
    q, k, v, plan = _block_plan()
    positions = torch.arange(150)
    mask = LocalMask.from_plan(plan, positions, torch.arange(plan.blocks.blk_idx.shape[2]), plan.blocks)
    split = 70
    def keys(lo, hi):
        return [(0, h, torch.arange(lo, hi), k[0, lo:hi, h], v[0, lo:hi, h]) for h in range(2)]
    out_a, lse_a = attend(q, mask, keys(0, split), scale=0.125, nheads_kv=2)
    out_b, lse_b = attend(q, mask, keys(split, 150), scale=0.125, nheads_kv=2)
    out, lse = merge_by_lse(out_a, lse_a, out_b, lse_b)
    ref, ref_lse = attention_ref(q, k, v, scale=0.125, mask=plan.to_dense(), return_lse=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
