"""`sample_attention_cp`: SampleAttention with the sequence split over the ranks of a group."""

from __future__ import annotations

import datetime
import zlib

import torch

from sampleattn.attention import Backend, resolve_backend, sample_attention
from sampleattn.config import SampleAttentionConfig
from sampleattn.planning import RowStatistics, make_plan, prepare_plan
from sampleattn.rules import BlockRule, SampledRule
from sampleattn.selection import without_covered_keys
from sampleattn.validation import check_inference_only, check_kernel_head_dim, check_qkv, default_scale

from .comm import ByteCounter, Communicator
from .fetch import fetch_keys_start
from .key_blocks import choose_key_blocks_cp
from .layout import Layout, SequenceLayout
from .local_mask import LocalMask
from .plan import ContextParallelPlan
from .stage3 import attend_rank
from .stripes import gather_sampled_queries, select_columns_cp, stripe_scores_cp

__all__ = ["sample_attention_cp"]

_DTYPES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}


def check_config_has_cp_form(config: SampleAttentionConfig) -> None:
    """Refuse a config that the ranks cannot reproduce exactly: its selection rule, or dense
    heads (``dense_above < 1`` runs the densest heads through dense attention, which needs every
    key on every rank)."""
    check_rule_has_cp_form(config.selection)
    if config.dense_above < 1.0:
        raise ValueError(f"dense_above={config.dense_above} runs the densest heads through dense attention, "
                         "which context parallelism does not distribute; leave dense_above=1.0 here")


def check_rule_has_cp_form(rule) -> None:
    """Refuse a selection rule, or a parameter of one, that the ranks cannot reproduce exactly."""
    if not isinstance(rule, (SampledRule, BlockRule)):
        raise ValueError(f"selection={rule.name!r} has no context-parallel form; use 'sampled' or 'block'")
    if isinstance(rule, BlockRule) and rule.row_stride != 1:
        # a query block cut by a chunk boundary would score other rows than the single-process plan
        raise ValueError(f"BlockRule(row_stride={rule.row_stride}) has no context-parallel form: every rank scores "
                         "every row of its query blocks; use row_stride=1 under context parallelism")


def _agree_on_inputs(q, k, v, config, layout: Layout, scale, comm: Communicator) -> None:
    """Every rank checks its own chunk, then all compare: a refused or mismatched chunk on any rank
    makes every rank raise `ValueError` at once (no rank is left waiting in a later collective)."""
    problem = None
    try:
        if all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k)) and q.shape[1] != k.shape[1]:
            raise ValueError(f"q holds {q.shape[1]} rows but k holds {k.shape[1]}: context parallelism splits "
                             "one sequence (self-attention prefill), so each rank's q, k and v chunks have one length")
        check_qkv(q, k, v)
        check_inference_only(q, k, v)
        scale = default_scale(q, scale)
    except ValueError as error:
        problem = error
    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    fingerprint = zlib.crc32(f"{config.model_dump_json()}|{layout}|{scale}".encode())
    if problem is None:
        shape = [1, *q.shape, k.shape[2], _DTYPES[q.dtype], fingerprint]
    else:
        shape = [0] * 8
    everyone = comm.all_gather(torch.tensor(shape, dtype=torch.int64, device=device), "input_check").tolist()
    if problem is not None:
        raise problem
    refused = [r for r, s in enumerate(everyone) if s[0] == 0]
    if refused:
        raise ValueError(f"rank(s) {refused} refused their input chunks (see their errors); every rank stops")
    fields = ("batch", "chunk rows", "query heads", "head dim", "KV heads", "dtype")
    for name, position in zip(fields, range(1, 7)):
        values = [s[position] for s in everyone]
        if len(set(values)) > 1:
            raise ValueError(f"the ranks' chunks differ in {name}: {values} (rank order); every rank must hold an "
                             "equal chunk of one sequence")
    if len({s[7] for s in everyone}) > 1:
        raise ValueError("the ranks were given different configs, layouts or scales; pass the same on every rank")


def _plan_cp(q, k, config: SampleAttentionConfig, layout: SequenceLayout, comm: Communicator, scale: float,
             backend: str) -> ContextParallelPlan:
    """Stages 1-2 across the ranks; the result equals `sampleattn.planning.plan` on the whole
    sequence (up to floating-point ties, see docs/distributed.md)."""
    batch, local, nheads_q, head_dim = q.shape
    seqlen = layout.seqlen
    # Stand-ins of the whole sequence's shape (one row in memory): the setup reads shapes only.
    whole_q = q.new_empty((1, 1, 1, head_dim)).expand(batch, seqlen, nheads_q, head_dim)
    whole_k = k.new_empty((1, 1, 1, head_dim)).expand(batch, seqlen, k.shape[2], head_dim)
    setup = prepare_plan(whole_q, whole_k, config, causal=True, scale=scale, heads=None)
    rule = config.selection
    key_pos = layout.positions(comm.rank, q.device)
    stats = None
    if isinstance(rule, SampledRule) or (isinstance(rule, BlockRule) and rule.stripes):
        q_s = gather_sampled_queries(setup, q, layout, comm)
        scores, finite = stripe_scores_cp(setup, q_s, k, key_pos, comm)
        max_count = rule.max_stripes if isinstance(rule, BlockRule) else None
        if isinstance(rule, BlockRule):  # as select_stripes: the sink blocks' keys are kept anyway
            scores = without_covered_keys(scores, key_pos, rule.heavy_columns_from)
        col_idx, col_count = select_columns_cp(setup, scores, finite, key_pos, comm, max_count=max_count)
        stats = RowStatistics(scores=scores, wmass=None, stripe_mass_of=None, finite=finite)
    else:
        n_sel = nheads_q // setup.q_per_sel
        col_idx = torch.full((batch, n_sel, 1, 16), seqlen, dtype=torch.int32, device=q.device)
        col_count = torch.zeros((batch, n_sel, 1), dtype=torch.int32, device=q.device)
    query_blocks = blocks = None
    if isinstance(rule, BlockRule):
        query_blocks, blocks = choose_key_blocks_cp(setup, q, k, layout, comm, rule, block_rows=config.block_m,
                                                    use_kernel=backend == "triton")
    plan = make_plan(setup, config, stats, col_idx, col_count, reports=False, keep_scores=False)
    return ContextParallelPlan(plan=plan, layout=layout, rank=comm.rank, setup=setup, config=config,
                               query_blocks=query_blocks, blocks=blocks)


def _dense_config(config: SampleAttentionConfig) -> SampleAttentionConfig:
    """Exact attention as a plan: a full window, the paper's rule (as the operator's dense kernel path)."""
    return SampleAttentionConfig(alpha=1.0, window_ratio=1.0, block_m=config.block_m, block_n=config.block_n,
                                 dense_below=0)


def sample_attention_cp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: SampleAttentionConfig | None = None,
    *,
    group=None,
    layout: Layout = "contiguous",
    scale: float | None = None,
    timeout: float | datetime.timedelta = 300.0,
    backend: Backend = "auto",
    counter: ByteCounter | None = None,
    return_lse: bool = False,
    return_plan: bool = False,
):
    """SampleAttention of one sequence split over the ranks of ``group`` (causal prefill).

    Every rank calls it with its chunk; the output comes back split the same way. With a group of
    one it is `sampleattn.sample_attention` itself (same plan, same output). With more, stages 1-2
    exchange only the sampled query rows, partial log-sum-exps, the top column scores and the
    pooled keys, and reach the single-process plan; stage 3 fetches per rank only the keys and
    values its rows keep (window band, stripe columns, key blocks) and merges its own keys' part
    with the fetched part by log-sum-exp.

    Args:
        q: (B, L, Hq, D) this rank's rows; k, v: (B, L, Hkv, D) the same rows' keys and values.
            The sequence has ``world * L`` rows, laid out by ``layout`` (`SequenceLayout`;
            `split_sequence` cuts a whole tensor).
        config: as for `sampleattn.sample_attention` (rules: ``sampled`` and ``block``).
        group: the process group (None: the default group); gloo for CPU tensors, NCCL for CUDA.
        layout: ``"contiguous"`` or ``"zigzag"`` (two pieces per rank, balanced causal work).
        timeout: seconds (or a timedelta) any one collective may take before every waiting rank
            raises `ContextParallelError`.
        backend: ``"auto"``/``"triton"`` runs stage 3 (and the block rule's estimate) in the
            operator's Triton kernels where they run; ``"torch"`` in plain PyTorch. The paper
            rule's stage 1 is plain PyTorch either way.
        counter: a `ByteCounter` that receives the bytes this rank sends, per phase.
    Returns:
        out (B, L, Hq, D) in q's dtype; then lse (B, Hq, L) fp32 if ``return_lse``; then the
        `ContextParallelPlan` (None for dense attention) if ``return_plan``.
    """
    config = config or SampleAttentionConfig()
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    comm = Communicator(group, timeout=timeout, counter=counter)
    _agree_on_inputs(q, k, v, config, layout, scale, comm)
    scale = default_scale(q, scale)
    spec = SequenceLayout(layout, comm.world, q.shape[1])
    chosen = resolve_backend(q, backend)
    if chosen == "triton" and comm.world > 1:
        check_kernel_head_dim(q.shape[-1])  # the same on every rank (compared above): all raise
    if comm.world == 1:
        outputs = sample_attention(q, k, v, config, scale=scale, return_lse=return_lse, return_plan=return_plan,
                                   backend=backend)
        if not return_plan:
            return outputs
        *rest, plan = outputs if isinstance(outputs, tuple) else (outputs,)
        cp_plan = None if plan is None else ContextParallelPlan(plan=plan, layout=spec, rank=0)
        return (*rest, cp_plan) if rest else cp_plan
    check_config_has_cp_form(config)
    dense = spec.seqlen < config.dense_below or config.keeps_everything()
    run_config = _dense_config(config) if dense else config
    cp_plan = _plan_cp(q, k, run_config, spec, comm, scale, chosen)
    out, lse = _attend_cp(q, k, v, cp_plan, spec, comm, chosen)
    outputs: tuple = (out.to(q.dtype),)
    if return_lse:
        outputs += (lse,)
    if return_plan:
        outputs += (None if dense else cp_plan,)
    return outputs[0] if len(outputs) == 1 else outputs


def _attend_cp(q, k, v, cp_plan: ContextParallelPlan, layout: SequenceLayout, comm: Communicator, backend: str):
    """Stage 3: the kernel over the rank's own keys while the others' needed keys travel, then
    over theirs; merged by log-sum-exp (`sampleattn.distributed.stage3`)."""
    positions = layout.positions(comm.rank, q.device)
    mask = LocalMask.from_plan(cp_plan.plan, positions, cp_plan.query_blocks, cp_plan.blocks)
    finish = fetch_keys_start(k, v, mask.needed_keys(k.shape[2], layout.seqlen), layout, comm)
    config = cp_plan.config
    return attend_rank(q, k, v, cp_plan, layout, comm.rank, finish, backend=backend, block_m=config.block_m,
                       block_n=config.block_n)

