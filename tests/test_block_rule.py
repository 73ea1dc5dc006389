"""The block rule (`sampleattn.rules.BlockRule`): its kernels against the plain-PyTorch
reference, its mask and density, and what a user relies on (a target of 1 is exact, planted
block structure is found, each key is counted once, a config that keeps everything is dense).
Kernels run natively on a GPU, under TRITON_INTERPRET=1 on the CPU (fp16/fp32)."""

from __future__ import annotations

import pytest
import torch

from sampleattn import SampleAttentionConfig, dense_attention, plan, sample_attention, sparse_attention
from sampleattn.kernels import block_scores
from sampleattn.reference import attention_ref, causal_mask, plan_ref, sparse_attention_ref
from sampleattn.rules import BlockRule, RULES
from sampleattn.rules.block import block_scores_ref

from kernel_helpers import DEVICE, qkv, rel_err

DTYPES = [torch.float16, torch.float32] if DEVICE == "cpu" else [torch.bfloat16, torch.float16]


def cfg(rule: BlockRule, **kw) -> SampleAttentionConfig:
    base = dict(alpha=0.9, window_ratio=0.08, sample_ratio=0.1, dense_below=0, block_m=64, block_n=32)
    base.update(kw)
    return SampleAttentionConfig(selection=rule, **base)


# (batch, seqlen_q, seqlen_k, Hq, Hkv, D, granularity, key_block, stripes, dtype index); stripes
# is False, True (as many as alpha takes) or the most columns kept (max_stripes: a few, so that
# some chosen blocks hold a column and others none)
GRID = [
    (1, 300, 300, 4, 4, 64, "query_head", 64, True, 0),
    (2, 200, 333, 4, 1, 64, "kv_head", 32, True, 1),  # MQA, Sq < Sk, batch 2
    (1, 257, 257, 8, 2, 128, "kv_head", 64, False, 0),  # GQA 4, no stripes
    (1, 190, 190, 3, 1, 96, "query_head", 32, True, 1),
    (1, 300, 300, 4, 2, 64, "kv_head", 32, 3, 0),
    (2, 230, 260, 2, 2, 64, "query_head", 64, 2, 1),
]


def _stripes_id(stripes) -> str:
    return "" if stripes is False else "-stripes" if stripes is True else f"-stripes{stripes}"


@pytest.mark.parametrize("case", GRID, ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}-{c[3]}/{c[4]}-d{c[5]}-{c[6]}-kb{c[7]}"
                         f"{_stripes_id(c[8])}")
def test_kernels_match_the_reference(case):
    batch, sq, sk, hq, hkv, d, gran, kb, stripes, di = case
    dtype = DTYPES[di]
    q, k, v = qkv(batch, sq, sk, hq, hkv, d, dtype, seed=sq + kb)
    limit = None if isinstance(stripes, bool) else stripes
    rule = BlockRule(beta=0.85, key_block=kb, stripes=stripes is not False, max_stripes=limit)
    config = cfg(rule, gqa_granularity=gran)
    q_per_sel = hq // hkv if gran == "kv_head" else 1
    scores = block_scores(q, k, key_block=kb, block_rows=64, q_per_sel=q_per_sel, scale=d ** -0.5)
    expected = block_scores_ref(q, k, key_block=kb, block_rows=64, q_per_sel=q_per_sel, scale=d ** -0.5)
    torch.testing.assert_close(scores, expected, atol=2e-2 if dtype != torch.float32 else 1e-4, rtol=1e-3)
    # Each query block's shares sum to its (row, head) pairs.
    rows = torch.clamp(sq - torch.arange(scores.shape[2], device=q.device) * 64, max=64).to(torch.float32)
    torch.testing.assert_close(scores.sum(-1), (rows * q_per_sel).expand_as(scores.sum(-1)), atol=1e-2, rtol=1e-3)
    p, p_ref = plan(q, k, config), plan_ref(q, k, config)
    if limit is not None:
        assert int(p.col_count.max()) == limit and p.col_idx.shape[-1] == 16  # the limit binds
        # some chosen blocks hold a column and others none: stage 3 tests columns in the former only
        n_kb = -(-sk // kb)
        with_column = torch.zeros(*p.col_idx.shape[:2], n_kb + 1, dtype=torch.bool, device=q.device)
        cols = p.col_idx[:, :, 0].long()
        with_column.scatter_(2, torch.where(cols < sk, cols // kb, n_kb), True)  # padding: slot n_kb
        chosen = p.blocks.blk_idx.long().clamp(max=n_kb)
        hit = with_column.gather(2, chosen.flatten(2)).view_as(chosen)[chosen < n_kb]
        assert bool(hit.any()) and not bool(hit.all())
    if dtype == torch.float32:  # the same selection (fp16 scores may break near-ties differently)
        assert torch.equal(p.blocks.blk_idx, p_ref.blocks.blk_idx)
        assert torch.equal(p.col_idx, p_ref.col_idx)
        # the reports: stage 3's lse over the mask against the exact one, as the dense oracle
        torch.testing.assert_close(p.retained_mean, p_ref.retained_mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(p.retained_min, p_ref.retained_min, atol=1e-4, rtol=0)
    # The density is exact: the mask's computed pairs over the visible pairs.
    mask = p.to_dense() & causal_mask(sq, sk, q.device)
    visible = causal_mask(sq, sk, q.device).sum()
    torch.testing.assert_close(p.density, (mask.sum((2, 3)) / visible).float(), atol=1e-6, rtol=0)
    out = sparse_attention(q, k, v, p)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert rel_err(out, sparse_attention_ref(q, k, v, p)) < tol
    assert rel_err(out, attention_ref(q, k, v, mask=p.to_dense())) < tol


def test_a_key_in_a_stripe_a_block_and_the_window_is_counted_once():
    """Plant one column every row attends to, inside a block every query block chooses: a double
    count would weigh it twice and move the output away from the masked reference."""
    q, k, v = qkv(1, 256, 256, 2, 2, 64, torch.float32, seed=3)
    u = torch.randn(64, generator=torch.Generator().manual_seed(1)).to(q.device)
    q += u
    k[:, 40] = 0.5 * u  # key 40: a stripe every row attends to, inside key block 0..63
    config = cfg(BlockRule(beta=0.7, key_block=64, stripes=True), alpha=0.8, window_ratio=0.1)
    p = plan(q, k, config)
    assert any(40 in p.selected_columns(0, h).tolist() for h in range(2))
    assert bool((p.blocks.blk_idx[0, :, 2:] == 0).any())  # block 0 chosen by a later query block
    out = sparse_attention(q, k, v, p)
    assert rel_err(out, attention_ref(q, k, v, mask=p.to_dense())) < 1e-5


def test_max_stripes_keeps_the_highest_scoring_columns():
    """A limit on the stripes keeps the top columns of the unlimited selection (by the sampled
    rows' scores) outside the sink block, which every query block keeps anyway, on the kernel
    path and the reference alike; a limit without stripes is refused."""
    q, k, v = qkv(1, 320, 320, 4, 2, 64, torch.float32, seed=11)
    k[:, 3] = 4 * q.mean(dim=(1, 2))[:, None]  # a heavy key in the sink block: never a column
    free = cfg(BlockRule(beta=0.8, key_block=32, stripes=True), alpha=0.95, gqa_granularity="kv_head")
    limited = cfg(BlockRule(beta=0.8, key_block=32, stripes=True, max_stripes=4), alpha=0.95,
                  gqa_granularity="kv_head")
    p_free = plan(q, k, free, keep_scores=True)
    assert int(p_free.col_count.min()) > 4
    assert all(3 in p_free.selected_columns(0, h).tolist() for h in (0, 2))  # the heaviest without a limit
    for make in (plan, plan_ref):
        p = make(q, k, limited)
        assert p.col_count.tolist() == [[[4], [4]]]
        for h in range(2):
            scores = p_free.scores[0, h, 0].clone()
            scores[:32] = 0
            top = torch.topk(scores, 4).indices.sort().values
            assert p.selected_columns(0, h * p.q_per_sel).tolist() == top.tolist()
    with pytest.raises(ValueError, match="set stripes=True or leave max_stripes=None"):
        BlockRule(max_stripes=8)
    assert BlockRule(stripes=True, max_stripes=8).hash_fields()["max_stripes"] == 8
    assert "max_stripes" not in BlockRule(stripes=True).hash_fields()


def test_a_limit_on_the_columns_keeps_the_top_scores_on_every_path():
    """``select_columns(max_count=K)``: the K best columns, the same with the static width (a
    CUDA graph's, then K rounded up to 16 wide) and where alpha is 1 (ranked by score, not the
    first K positions)."""
    from sampleattn.selection import select_columns

    gen = torch.Generator().manual_seed(4)
    scores = torch.rand(2, 3, 1, 300, generator=gen)
    scores[..., 7:12] = 0.5  # ties at the limit break by ascending column
    n_rows = torch.full((2, 3, 1), 20.0)
    window = torch.full((2, 3, 1), 1.0)
    reach = torch.full((3, 1), 299)
    for alpha in (torch.tensor([0.99, 0.99, 0.99]), torch.tensor([1.0, 0.99, 1.0])):
        dynamic = select_columns(scores, window, n_rows, alpha, reach=reach, static=False, max_count=20)
        static = select_columns(scores, window, n_rows, alpha, reach=reach, static=True, max_count=20)
        assert dynamic[1].eq(20).all() and static[0].shape[-1] == 32
        assert torch.equal(static[1], dynamic[1])
        assert torch.equal(static[0][..., :20], dynamic[0][..., :20]) and static[0][..., 20:].eq(300).all()
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :20]
        assert torch.equal(dynamic[0][..., :20].long(), order.sort(dim=-1).values)


def test_target_one_is_exact_attention():
    q, k, v = qkv(1, 200, 200, 4, 2, 64, torch.float32, seed=5)
    config = cfg(BlockRule(beta=1.0, key_block=32, stripes=False), window_ratio=0.02)
    p = plan(q, k, config)
    assert p.mean_density == pytest.approx(1.0)
    assert rel_err(sparse_attention(q, k, v, p), attention_ref(q, k, v)) < 1e-5
    # ...and the operator takes it for dense attention (no plan at all)
    out, none = sample_attention(q, k, v, config, return_plan=True)
    assert none is None and rel_err(out, attention_ref(q, k, v)) < 1e-5


def test_planted_key_blocks_are_found():
    """Rows of query block t attend to key block (t // 2) far to their left: the rule finds it
    for every query block, while a window and sinks would not."""
    torch.manual_seed(0)
    sq = d = 64
    n = 512
    q = torch.randn(1, n, 1, d) * 0.1
    k = torch.randn(1, n, 1, d) * 0.1
    v = torch.randn(1, n, 1, d)
    for t in range(4, n // 64):
        target = t // 2 - 2
        direction = torch.randn(d)
        q[0, t * 64:(t + 1) * 64, 0] += direction * 2.0
        k[0, target * 64:(target + 1) * 64, 0] += direction * 2.0
    q, k, v = (x.to(DEVICE, torch.float32) for x in (q, k, v))
    config = cfg(BlockRule(beta=0.6, key_block=64, stripes=False), window_ratio=0.1)
    p = plan(q, k, config)
    for t in range(4, n // 64):
        chosen = p.blocks.blk_idx[0, 0, t, : int(p.blocks.blk_count[0, 0, t])].tolist()
        assert t // 2 - 2 in chosen, (t, chosen)
    out = sample_attention(q, k, v, config)
    assert rel_err(out, attention_ref(q, k, v)) < 0.05
    del sq


def test_dense_fallback_above_the_density_threshold():
    q, k, v = qkv(1, 300, 300, 2, 2, 64, torch.float32, seed=7)
    sparse = cfg(BlockRule(beta=0.99, key_block=64))
    assert plan(q, k, sparse).mean_density > 0.5  # random inputs: nearly every block
    out, p = sample_attention(q, k, v, sparse.model_copy(update={"dense_above": 0.5}), return_plan=True)
    assert p is not None  # the plan was made, then dense attention ran
    assert rel_err(out, attention_ref(q, k, v)) < 1e-5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("hq,granularity", [(4, "kv_head"), (4, "query_head"), (2, "query_head")])
def test_dense_fallback_per_kv_head(backend, hq, granularity):
    """A KV head with planted structure stays sparse; a random one (nearly every block kept) runs
    dense: its heads equal exact attention, the sparse head equals the operator without the
    fallback."""
    n, d, hkv = 320, 64, 2
    q, k, v = qkv(1, n, n, hq, hkv, d, torch.float32, seed=11)
    q_per_kv = hq // hkv
    # KV head 0: every row of its query heads looks at keys 0-63 only (one strong key block)
    k[:, :64, 0] += 9.0 * torch.ones(d, device=k.device) / d ** 0.5
    q[:, :, :q_per_kv] += 9.0 * torch.ones(d, device=q.device) / d ** 0.5
    sparse = cfg(BlockRule(beta=0.9, key_block=64), window_ratio=0.05, gqa_granularity=granularity)
    made = plan(q, k, sparse)
    per_kv = made.density.reshape(hkv, q_per_kv).mean(dim=1)
    assert per_kv[0] < 0.5 < per_kv[1], per_kv
    out_sparse = sample_attention(q, k, v, sparse, backend=backend)
    out, p = sample_attention(q, k, v, sparse.model_copy(update={"dense_above": 0.5}), return_plan=True,
                              backend=backend)
    assert torch.equal(p.density, made.density)  # the plan made, every head's density
    exact = attention_ref(q, k, v)
    dense_q = slice(q_per_kv, hq)
    assert rel_err(out[:, :, dense_q], exact[:, :, dense_q]) < 1e-5
    assert torch.equal(out[:, :, :q_per_kv], out_sparse[:, :, :q_per_kv])
    # the dense heads came from dense attention on their own (bit for bit), not from stage 3
    by_sdpa = dense_attention(q[:, :, dense_q], k[:, :, 1:], v[:, :, 1:])
    assert torch.equal(out[:, :, dense_q], by_sdpa)
    assert not torch.equal(out_sparse[:, :, dense_q], by_sdpa)


def test_rule_from_names_json_and_flat_fields():
    assert SampleAttentionConfig(selection="block").selection == BlockRule()
    config = SampleAttentionConfig(selection=BlockRule(beta=0.9, key_block=64, stripes=False))
    again = SampleAttentionConfig.model_validate_json(config.model_dump_json())
    assert again == config and isinstance(again.selection, BlockRule)
    old = SampleAttentionConfig.model_validate({"selection": "rescored", "candidate_alpha": 0.995})
    assert old.selection.candidate_alpha == 0.995
    assert set(RULES) == {"sampled", "rescored", "block"}
    with pytest.raises(ValueError, match="not a selection rule"):
        SampleAttentionConfig(selection="nope")
    with pytest.raises(ValueError, match="power of two"):
        BlockRule(key_block=48)
    with pytest.raises(ValueError, match="segment_rows"):
        SampleAttentionConfig(selection="block", segment_rows=128)


@pytest.mark.parametrize("q_per_sel", [1, 2])
def test_block_scores_whole_tiles_match_the_reference(q_per_sel):
    """Small tiles of pooled blocks, so that most tiles take the kernel's whole-block path (no
    mask, constant count term) and the tiles at the diagonal the exact one."""
    q, k, _ = qkv(1, 400, 400, 2, 1, 64, DTYPES[1], seed=11)
    kw = dict(key_block=16, block_rows=32, q_per_sel=q_per_sel, scale=0.125)
    torch.testing.assert_close(block_scores(q, k, block_c=16, **kw), block_scores_ref(q, k, **kw),
                               atol=1e-4, rtol=1e-3)


SELECT_GRID = [  # (batch, Hsel, n_qblocks, n_kblocks, beta, sink_blocks)
    (2, 3, 5, 37, 0.9, 1),
    (1, 2, 9, 9, 0.99, 0),
    (1, 2, 6, 20, 0.5, 2),
    (1, 1, 4, 70, 1.0, 1),
]


@pytest.mark.parametrize("case", SELECT_GRID, ids=lambda c: "x".join(map(str, c)))
def test_selection_kernel_matches_the_reference(case):
    from sampleattn.kernels import select_key_blocks
    from sampleattn.rules.block import select_key_blocks_ref

    batch, n_sel, n_qb, n_kb, beta, sinks = case
    gen = torch.Generator().manual_seed(n_kb)
    scores = torch.rand(batch, n_sel, n_qb, n_kb, generator=gen) ** 4
    scores[0, 0, 0] = 0.0  # a query block whose scores are all zero keeps its sinks only
    scores[-1, -1, -1, :4] = 0.25  # ties at the threshold are kept together
    cand = torch.randint(0, n_kb + 1, (n_sel, n_qb), generator=gen)
    width = -(-n_kb // 16) * 16
    kw = dict(sink_blocks=sinks, width=width)
    got = select_key_blocks(scores.to(DEVICE), cand.to(DEVICE), beta, block_c=16, **kw)
    want = select_key_blocks_ref(scores, cand, beta, **kw)
    assert torch.equal(got[1].cpu(), want[1])
    assert torch.equal(got[0].cpu(), want[0])


def test_selection_reaches_the_target_with_the_fewest_blocks():
    """What the threshold means: the chosen blocks with the window reach beta of each row's
    mass, and leaving out the smallest chosen free block would fall short of it."""
    from sampleattn.kernels import select_key_blocks

    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(1, 2, 8, 50, generator=gen) ** 3
    cand = torch.randint(10, 51, (2, 8), generator=gen)
    beta = 0.8
    blk_idx, count = select_key_blocks(scores.to(DEVICE), cand.to(DEVICE), beta, sink_blocks=1, width=64, block_c=16)
    blk_idx, count = blk_idx.cpu(), count.cpu()
    for s in range(2):
        for t in range(8):
            row, c = scores[0, s, t], int(cand[s, t])
            chosen = blk_idx[0, s, t, : count[0, s, t]].long()
            assert torch.all(blk_idx[0, s, t, count[0, s, t]:] == 50)
            assert torch.all(chosen[1:] > chosen[:-1]) and 0 in chosen.tolist()  # ascending, the sink kept
            kept = row[chosen].sum() + row[c:].sum()
            assert kept >= beta * row.sum() - 1e-5
            free = chosen[chosen != 0]
            if len(free):
                assert kept - row[free].min() < beta * row.sum() + 1e-5


def test_selection_keeps_every_candidate_where_scores_are_not_finite():
    from sampleattn.kernels import select_key_blocks
    from sampleattn.rules.block import select_key_blocks_ref

    scores = torch.rand(1, 1, 3, 20)
    scores[0, 0, 1, 5] = float("nan")
    cand = torch.tensor([[3, 12, 20]])
    for fn, kw in ((select_key_blocks, dict(block_c=16)), (select_key_blocks_ref, {})):
        blk_idx, count = fn(scores.to(DEVICE), cand.to(DEVICE), 0.9, sink_blocks=1, width=32, **kw)
        assert count[0, 0, 1].item() == 12
        assert blk_idx[0, 0, 1, :12].cpu().tolist() == list(range(12))


@pytest.mark.parametrize("row_stride", [2, 4])
def test_block_scores_of_every_few_rows_match_the_reference(row_stride):
    """The estimate on one row in every ``row_stride`` (the last of each group; the sequence's
    last row where it cuts the group short), Sq < Sk and a length no multiple of the block."""
    q, k, _ = qkv(1, 203, 330, 4, 2, 64, DTYPES[1], seed=5)
    kw = dict(key_block=32, block_rows=64, q_per_sel=2, scale=0.125, row_stride=row_stride)
    got = block_scores(q, k, **kw)
    torch.testing.assert_close(got, block_scores_ref(q, k, **kw), atol=1e-4, rtol=1e-3)
    # every scored (row, head) pair's shares sum to 1: 2 heads x ceil(rows of the block / stride)
    rows = torch.tensor([64, 64, 64, 203 - 192])
    assert torch.allclose(got.sum(-1)[0, 0].cpu(), 2.0 * torch.ceil(rows / row_stride), atol=1e-3)


@pytest.mark.parametrize("row_stride", [1, 2])
def test_squared_shares_match_the_reference(row_stride):
    """``share_power=2``: the kernel sums each row's squared shares, as the reference does; a
    query block's entries then sum to less than its scored pairs (a row's squares sum to at
    most 1), and to exactly that where a row puts all its mass on one block."""
    q, k, _ = qkv(1, 203, 330, 4, 2, 64, DTYPES[1], seed=6)
    kw = dict(key_block=32, block_rows=64, q_per_sel=2, scale=0.125, row_stride=row_stride)
    got = block_scores(q, k, share_power=2, **kw)
    torch.testing.assert_close(got, block_scores_ref(q, k, share_power=2, **kw), atol=1e-4, rtol=1e-3)
    plain = block_scores(q, k, **kw)
    assert bool((got.sum(-1) <= plain.sum(-1) + 1e-4).all()) and bool((got.sum(-1) < plain.sum(-1)).any())


def test_squared_shares_plan_matches_the_reference_plan():
    """The operator's plan with ``share_power=2`` against the plain-PyTorch plan (fp32, GQA 2,
    Sq < Sk), and its output against dense attention under its mask."""
    q, k, v = qkv(1, 230, 300, 4, 2, 64, torch.float32, seed=9)
    config = cfg(BlockRule(beta=0.6, key_block=32, share_power=2), gqa_granularity="kv_head")
    p, p_ref = plan(q, k, config), plan_ref(q, k, config)
    assert torch.equal(p.blocks.blk_idx, p_ref.blocks.blk_idx)
    assert 0 < p.mean_density < 1
    assert rel_err(sparse_attention(q, k, v, p), attention_ref(q, k, v, mask=p.to_dense())) < 1e-4


def test_squared_shares_rank_a_block_one_row_needs_above_a_block_every_row_shares():
    """Two candidate blocks past the sink: block 1 holds all of one row's mass, block 2 a little
    of every other row's. At beta 0.99 summed shares keep block 2 only, and row 0 loses all its
    mass; squared shares (at the rule's mapped target) keep block 1."""
    from sampleattn.rules.block import select_key_blocks_ref

    rows = 128
    share = torch.zeros(rows, 4)
    share[:, 0] = 0.9  # the sink block, forced
    share[:, 2] = 0.02  # a little of every row
    share[0, 1], share[0, 0], share[0, 2] = 1.0, 0.0, 0.0  # all of row 0
    share[1:, 3] = 1.0 - share[1:, :3].sum(-1)  # the window's block
    cand = torch.tensor([[3]])
    kept = {}
    for power in (1, 2):
        rule = BlockRule(beta=0.99, share_power=power)
        assert rule.selection_target == pytest.approx(1 - 0.01 ** power)
        scores = (share ** power).sum(0).view(1, 1, 1, 4)
        idx, count = select_key_blocks_ref(scores, cand, rule.selection_target, sink_blocks=1, width=16)
        kept[power] = idx[0, 0, 0, 1:count.item()].tolist()  # past the sink
    assert kept[1] == [2]
    assert 1 in kept[2]


def test_row_stride_is_checked_against_the_query_block():
    with pytest.raises(ValueError, match="power of two"):
        BlockRule(row_stride=3)
    with pytest.raises(ValueError, match="at least 16"):
        cfg(BlockRule(row_stride=8), block_m=64)
    assert "row_stride" not in BlockRule().hash_fields() and BlockRule(row_stride=2).hash_fields()["row_stride"] == 2


@pytest.mark.parametrize("case", [(2, 3, 2, 700, 900, 64, 32), (1, 2, 4, 513, 513, 128, 128), (1, 1, 1, 1000, 1000, 64, 16),
                                  (1, 2, 1, 300, 1300, 32, 64)], ids=lambda c: "-".join(map(str, c)))
def test_block_pairs_from_the_last_blocks_equal_the_general_count(case):
    """Without stripe columns the density counts only each list's last few blocks exactly (the
    earlier ones are whole and left of every window): the same pairs as the general count,
    with windows that differ inside a selection group."""
    from sampleattn.planning import KeyBlocks
    from sampleattn.rules.block import candidate_blocks
    from sampleattn.selection import block_pairs

    batch, n_sel, group, sq, sk, rows, kb = case
    gen = torch.Generator().manual_seed(sq)
    n_qb, n_kb = -(-sq // rows), -(-sk // kb)
    window = torch.randint(5, 60, (n_sel * group,), generator=gen)
    cand = candidate_blocks(window, seqlen_q=sq, seqlen_k=sk, block_rows=rows, key_block=kb, q_per_sel=group)
    blk_idx = torch.full((batch, n_sel, n_qb, n_kb), n_kb, dtype=torch.int32)
    count = torch.zeros((batch, n_sel, n_qb), dtype=torch.int32)
    for b in range(batch):
        for s in range(n_sel):
            for t in range(n_qb):
                c = int(cand[s, t])
                pick = torch.randperm(c, generator=gen)[: int(torch.randint(0, c + 1, (1,), generator=gen))]
                blk_idx[b, s, t, : len(pick)] = pick.sort().values.to(torch.int32)
                count[b, s, t] = len(pick)
    no_cols = torch.full((batch, n_sel, 1, 16), sk, dtype=torch.int32), torch.zeros((batch, n_sel, 1), dtype=torch.int32)
    kw = dict(seqlen_q=sq, seqlen_k=sk, q_per_sel=group)
    make = lambda has_columns: KeyBlocks(blk_idx=blk_idx, blk_count=count, block_rows=rows, key_block=kb,
                                         has_columns=has_columns)
    general = block_pairs(make(True), *no_cols, window, **kw)
    assert general.sum() > 0
    assert torch.equal(block_pairs(make(False), *no_cols, window, **kw), general)
