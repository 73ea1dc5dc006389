"""The operator on a CUDA GPU in bf16/fp16: stage 3 against dense attention under the same mask,
the plan's kernels against the plain-PyTorch plan, the whole operator (both selection rules)
against the fp32 oracle of its own plan up to 32K tokens, and first timings against SDPA cuDNN
and flash (``gpu_check.json`` with ``--gpu-out``)."""

from __future__ import annotations

import math

import pytest
import torch

from sampleattn import SampleAttentionConfig, plan, sample_attention, sparse_attention
from sampleattn.planning import SparsePlan
from sampleattn.reference import attention_ref, attention_rows_ref, plan_ref, relative_error
from sampleattn.selection import density_per_head
from sampleattn.timing import cuda_ms

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU: run `pytest -m gpu tests/gpu` there")]

DEVICE = "cuda"
PAPER = dict(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
RESCORED = dict(selection="rescored", candidate_alpha=0.999)


def structured_inputs(seqlen, hq, hkv, d, dtype, seed=0):
    """Random q/k/v (1, seqlen, heads, d) with sinks, stripe columns and a local window, planted
    on the GPU (so that 32K-128K inputs are built in milliseconds)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(1, seqlen, hq, d, device=DEVICE, generator=g)
    k = torch.randn(1, seqlen, hkv, d, device=DEVICE, generator=g) * 0.5
    v = torch.randn(1, seqlen, hkv, d, device=DEVICE, generator=g)
    direction = torch.randn(hkv, d, device=DEVICE, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    stripes = torch.randperm(seqlen, device=DEVICE, generator=g)[:max(4, seqlen // 200)]
    stripes = torch.cat([torch.arange(4, device=DEVICE), stripes])
    k[:, stripes] += 3.0 * direction
    q += 2.0 * direction.repeat_interleave(hq // hkv, dim=0)
    # Local structure: a slowly varying positional signal shared by q and k.
    walk = torch.cumsum(torch.randn(seqlen, 1, d, device=DEVICE, generator=g), 0)
    walk = walk / walk.norm(dim=-1, keepdim=True) * 2.5
    q += walk.unsqueeze(0)
    k += walk.unsqueeze(0)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_plan(batch, sq, sk, hq, hkv, d, seed) -> SparsePlan:
    """A plan of random windows and random columns (a fifth of the keys) per query head."""
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, max(2, sk // 4), (hq,), generator=g).to(torch.int32)
    n_cols = max(1, sk // 5)
    cols = torch.stack([torch.randperm(sk, generator=g)[:n_cols] for _ in range(batch * hq)])
    cols = torch.sort(cols, dim=-1).values.view(batch, hq, 1, -1).to(torch.int32)
    count = torch.full((batch, hq, 1), cols.shape[-1], dtype=torch.int32)
    seg_rows = -(-sq // 64) * 64
    cols, count, windows = cols.to(DEVICE), count.to(DEVICE), windows.to(DEVICE)
    density = density_per_head(cols, count, windows, seqlen_q=sq, seqlen_k=sk, segment_rows=seg_rows, q_per_sel=1)
    ones = torch.ones(batch, hq, device=DEVICE)
    return SparsePlan(batch=batch, seqlen_q=sq, seqlen_k=sk, nheads_q=hq, nheads_kv=hkv,
                      gqa_granularity="query_head", segment_rows=seg_rows, scale=1 / math.sqrt(d),
                      window=windows, col_idx=cols, col_count=count, retained_mean=ones,
                      retained_min=ones, density=density, sampled_rows=torch.zeros(0, dtype=torch.int64))


def _rows(seqlen: int) -> torch.Tensor:
    rows = torch.randperm(seqlen, device=DEVICE)[:256].sort().values
    rows[-1] = seqlen - 1
    return rows


# (batch, seqlen_q, seqlen_k, heads q, heads kv, head dim): one row, odd lengths, chunked prefill,
# head dims 64-256, Llama-3-8B's geometry.
KERNEL_CASES = [(1, 1, 1, 2, 2, 64), (2, 97, 97, 4, 1, 64), (1, 1025, 1025, 32, 8, 128), (1, 500, 4096, 9, 3, 64),
                (1, 333, 777, 4, 2, 96), (1, 300, 300, 4, 4, 256), (1, 4096, 4096, 32, 8, 128)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: "b{}-{}x{}-{}/{}-d{}".format(*c))
def test_stage3_matches_dense_attention_under_the_same_mask(case, dtype, gpu_results):
    b, sq, sk, hq, hkv, d = case
    torch.manual_seed(KERNEL_CASES.index(case))
    q = torch.randn(b, sq, hq, d, device=DEVICE, dtype=dtype)
    k = torch.randn(b, sk, hkv, d, device=DEVICE, dtype=dtype)
    v = torch.randn(b, sk, hkv, d, device=DEVICE, dtype=dtype)
    p = random_plan(b, sq, sk, hq, hkv, d, seed=KERNEL_CASES.index(case))
    out = sparse_attention(q, k, v, p)
    mask = p.to_dense()
    golden = attention_ref(q.float(), k.float(), v.float(), scale=p.scale, mask=mask)
    same = attention_ref(q, k, v, scale=p.scale, mask=mask, upcast=False)
    err, base = relative_error(out, golden), relative_error(same, golden)
    gpu_results("gpu_check", {"check": f"kernel {str(dtype)[6:]} b{b} {sq}x{sk} {hq}/{hkv} d{d}", "error": err,
                              "torch_same_dtype_error": base})
    assert err <= 2 * base + 1e-5, (err, base)


@pytest.mark.parametrize("granularity", ["query_head", "kv_head"])
def test_plan_kernels_match_the_pytorch_plan(granularity, gpu_results):
    q, k, _ = structured_inputs(2048, 8, 2, 128, torch.bfloat16, seed=1)
    config = SampleAttentionConfig(**PAPER, gqa_granularity=granularity)
    fast = plan(q, k, config, keep_scores=True)
    slow = plan_ref(q, k, config, keep_scores=True)
    score_err = relative_error(fast.scores, slow.scores)
    count_diff = int((fast.col_count - slow.col_count).abs().max())
    gpu_results("gpu_check", {"check": f"plan vs plan_ref bf16 2k {granularity}", "score_rel_err": score_err,
                              "max_count_diff": count_diff, "retained_mean": float(fast.retained_mean.mean())})
    assert score_err < 2e-2
    assert count_diff <= max(2, int(0.02 * slow.col_count.max()))


@pytest.mark.parametrize("granularity", ["query_head", "kv_head"])
def test_operator_matches_the_oracle_of_its_plan(operator_length, granularity, gpu_results):
    """Llama-3-8B geometry (32/8, d128), bf16, 256 random rows."""
    n = operator_length
    q, k, v = structured_inputs(n, 32, 8, 128, torch.bfloat16, seed=n)
    out, p = sample_attention(q, k, v, SampleAttentionConfig(**PAPER, gqa_granularity=granularity), return_plan=True)
    rows = _rows(n)
    err = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
    gpu_results("gpu_check", {"check": f"operator bf16 {n} 32/8 d128 {granularity}", "error_vs_same_plan": err,
                              "error_vs_full": relative_error(out[:, rows], attention_rows_ref(q, k, v, rows)),
                              "density": p.mean_density, "retained_mean": float(p.retained_mean.mean()),
                              "retained_min": float(p.retained_min.min()),
                              "selected_cols_mean": float(p.n_selected.float().mean())})
    assert not torch.isnan(out).any()
    assert err < 1e-2


@pytest.mark.parametrize("granularity,stride", [("query_head", 1), ("kv_head", 4)])
def test_rescoring_kernels_match_the_dense_oracle(granularity, stride, gpu_results):
    from sampleattn.kernels import rescore_candidates
    from sampleattn.reference import rescore_ref

    q, k, _ = structured_inputs(2048, 8, 2, 128, torch.bfloat16, seed=2)
    config = SampleAttentionConfig(**PAPER, **RESCORED, gqa_granularity=granularity, rescore_stride=stride)
    cand = plan(q, k, config.model_copy(update={"selection": "sampled", "alpha": 0.999}))
    kw = {"q_per_sel": cand.q_per_sel, "scale": cand.scale, "block_m": config.block_m, "m_stride": stride}
    fast = rescore_candidates(q, k, cand.col_idx, cand.col_count, cand.window, **kw)
    slow = rescore_ref(q, k, cand.col_idx, cand.col_count, cand.window, **kw)
    score_err = relative_error(fast, slow)
    fast_plan, slow_plan = plan(q, k, config), plan_ref(q, k, config)
    count_diff = int((fast_plan.col_count - slow_plan.col_count).abs().max())
    gpu_results("gpu_check", {"check": f"rescoring vs rescore_ref bf16 2k {granularity} stride {stride}",
                              "score_rel_err": score_err, "max_count_diff": count_diff,
                              "density": fast_plan.mean_density,
                              "candidate_density": float(fast_plan.candidate_density.mean())})
    assert score_err < 2e-2
    assert count_diff <= max(2, int(0.02 * slow_plan.col_count.max()))


def test_rescored_operator_matches_the_oracle_of_its_plan(request, gpu_results):
    """At the longest of ``--gpu-lengths``."""
    n = max(int(x) for x in request.config.getoption("--gpu-lengths").split(",") if x.strip())
    q, k, v = structured_inputs(n, 32, 8, 128, torch.bfloat16, seed=n)
    out, p = sample_attention(q, k, v, SampleAttentionConfig(**PAPER, **RESCORED), return_plan=True)
    rows = _rows(n)
    err = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
    gpu_results("gpu_check", {"check": f"operator rescored bf16 {n} 32/8 d128", "error_vs_same_plan": err,
                              "error_vs_full": relative_error(out[:, rows], attention_rows_ref(q, k, v, rows)),
                              "density": p.mean_density, "candidate_density": float(p.candidate_density.mean())})
    assert not torch.isnan(out).any()
    assert err < 1e-2


def test_first_timings_against_sdpa(timing_length, gpu_results):
    """The plan, stage 3 and the whole operator (both rules, both granularities) against SDPA
    cuDNN and flash on the same inputs; full-density stage 3 in TFLOP/s. A measurement for the
    pages: it checks only that every time is a positive number and the plans are sparse."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    n = timing_length
    q, k, v = structured_inputs(n, 32, 8, 128, torch.bfloat16, seed=n)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    kh_e, vh_e = kh.repeat_interleave(4, 1), vh.repeat_interleave(4, 1)
    row: dict = {"timing": n}
    for name, backend in (("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                row[name] = cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh_e, vh_e, is_causal=True))
        except RuntimeError as error:  # a backend this machine lacks is reported, not a failure
            row[name], row[name + "_error"] = None, str(error)[:200]
    configs = {gran: SampleAttentionConfig(**PAPER, gqa_granularity=gran) for gran in ("query_head", "kv_head")}
    configs.update({f"rescored_s{s}": SampleAttentionConfig(**PAPER, **RESCORED, rescore_stride=s) for s in (1, 4)})
    for tag, config in configs.items():
        p = plan(q, k, config)
        row[f"{tag}_plan_ms"] = cuda_ms(lambda: plan(q, k, config))
        row[f"{tag}_attn_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, p))
        row[f"{tag}_total_ms"] = cuda_ms(lambda: sample_attention(q, k, v, config))
        row[f"{tag}_density"] = p.mean_density
    pf = plan(q, k, SampleAttentionConfig(alpha=1.0, window_ratio=1.0, dense_below=0))
    row["full_density_attn_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, pf))
    flops = 4 * n * n * 128 * 32 / 2
    row["full_density_tflops"] = flops / row["full_density_attn_ms"] / 1e9
    if row.get("sdpa_cudnn_ms"):
        row["cudnn_tflops"] = flops / row["sdpa_cudnn_ms"] / 1e9
    gpu_results("gpu_check", row)
    assert all(row[f"{tag}_total_ms"] > 0 and 0 < row[f"{tag}_density"] < 1 for tag in configs)
    assert row["full_density_attn_ms"] > 0
