"""The operator against dense baselines on a CUDA GPU: the benchmark behind docs/benchmarks.md.

One case = (geometry, length, inputs, config). For each case it reports the time of each stage
(plan = stages 1-2, attention = stage 3) and in total, TFLOP/s on the pairs actually computed,
density, the relative L2 error against exact attention on a random subset of rows, and the
speed-up against each baseline measured in the same process: PyTorch SDPA with the cuDNN
backend, SDPA with the flash backend (FlashAttention-2) and FlexAttention (dense causal, and
block-sparse with the same selection rounded to its blocks where its block mask fits).

Timings: CUDA events around each call after warm-up, median of repeats; inputs random, never
zeros; every case checks its own output (no NaN, error against the oracle of its own plan)
before it is timed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import torch

from sampleattn.timing import cuda_ms

from sampleattn import SampleAttentionConfig, plan, sparse_attention
from sampleattn.reference import attention_rows_ref, relative_error

__all__ = ["GEOMETRIES", "Case", "run_case", "make_inputs"]


@dataclasses.dataclass(frozen=True)
class Geometry:
    name: str
    nheads_q: int
    nheads_kv: int
    head_dim: int


GEOMETRIES = {
    "llama3": Geometry("llama3", 32, 8, 128),
    "chatglm2": Geometry("chatglm2", 32, 2, 128),
    "smollm2": Geometry("smollm2", 9, 3, 64),
}


@dataclasses.dataclass(frozen=True)
class Case:
    geometry: str
    seqlen: int
    batch: int
    inputs: str  # "synthetic" or "smollm2-layerN"
    alpha: float
    window_ratio: float
    sample_ratio: float
    gqa_granularity: str = "kv_head"

    @property
    def full_density(self) -> bool:
        return self.alpha >= 1.0 and self.window_ratio >= 1.0



def make_inputs(geometry: Geometry, seqlen: int, batch: int, inputs: str, *, density: float = 0.01,
                seed: int = 0, dtype=torch.bfloat16):
    """q (B, S, Hq, D), k/v (B, S, Hkv, D) on the GPU: the structured generator, or real q/k/v
    captured from SmolLM2 ("smollm2-layerN", RoPE-scaled beyond its 8K context)."""
    if inputs == "synthetic":
        from sampleattn.synthetic import structured_qkv

        return structured_qkv(batch, seqlen, seqlen, geometry.nheads_q, geometry.nheads_kv, geometry.head_dim,
                              density=density, dtype=dtype, device="cuda", seed=seed)
    if inputs.startswith("smollm2-layer"):
        layer = int(inputs.removeprefix("smollm2-layer"))
        from sampleattn.tuner.calibration import calibration_windows, essays_text
        from sampleattn.tuner.capture import capture_qkv
        from sampleattn.tuner.catalog import get_model_spec
        from sampleattn.tuner.models import load_model

        spec = get_model_spec("smollm2-135m")
        model, tokenizer = load_model(spec, device="cuda", dtype=torch.bfloat16, max_length=seqlen)
        ids = calibration_windows(tokenizer, essays_text(), seqlen, batch, seed)
        ids = torch.stack(list(ids)).view(batch, seqlen).to("cuda")
        captured = capture_qkv(model, ids, layers=[layer], with_logits=False)
        qkv = captured.qkv[layer]
        del model
        return (qkv["q"].to(dtype).contiguous(), qkv["k"].to(dtype).contiguous(), qkv["v"].to(dtype).contiguous())
    raise ValueError(f"inputs={inputs!r}; choose 'synthetic' or 'smollm2-layerN'")



def dense_baselines(q, k, v, *, repeat: int, flex: bool) -> dict[str, float | str | None]:
    """Times of SDPA cuDNN, SDPA flash and FlexAttention (dense causal) on the same inputs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    times: dict[str, float | str | None] = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                times[name] = cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True),
                                      repeat=repeat)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            times[name] = None
            times[name + "_error"] = f"{type(error).__name__}: {str(error)[:120]}"
    if flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            compiled = torch.compile(flex_attention, dynamic=False)
            mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, q.shape[1], k.shape[1],
                                     device="cuda", _compile=True)
            times["flex"] = cuda_ms(lambda: compiled(qh, kh, vh, block_mask=mask), repeat=repeat)
        except Exception as error:  # FlexAttention's limits are reported in the table, not fatal
            times["flex"] = None
            times["flex_error"] = f"{type(error).__name__}: {str(error)[:120]}"
    return times


def flex_block_sparse_ms(q, k, v, sparse_plan, *, repeat: int, block: int = 128) -> float | str:
    """FlexAttention with the plan's selection rounded to 128x128 blocks (causal inside blocks)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    batch, seqlen, nheads_q, _ = q.shape
    n_blocks = -(-seqlen // block)
    if batch * nheads_q * n_blocks * n_blocks * 5 > 8 * 2**30:
        return "block mask too large"
    group = nheads_q // k.shape[2]
    qb = torch.arange(n_blocks, device="cuda")
    last_pos = torch.clamp((qb + 1) * block, max=seqlen) - 1
    first_pos = qb * block
    w = sparse_plan.window.to(torch.int64).view(1, -1, 1, 1)
    kvb = torch.arange(n_blocks, device="cuda").view(1, 1, 1, -1)
    band_lo = torch.clamp(first_pos.view(1, 1, -1, 1) - w + 1, min=0) // block
    band = (kvb >= band_lo) & (kvb <= last_pos.view(1, 1, -1, 1) // block)
    cols = torch.zeros(batch, sparse_plan.nheads_sel, n_blocks + 1, dtype=torch.bool, device="cuda")
    idx = torch.clamp(sparse_plan.col_idx[:, :, 0].to(torch.int64) // block, max=n_blocks)
    cols.scatter_(2, idx, True)
    cols = cols[..., :n_blocks].repeat_interleave(sparse_plan.q_per_sel, dim=1).unsqueeze(2)
    keep = (band | cols) & (kvb <= last_pos.view(1, 1, -1, 1) // block)
    counts = keep.sum(-1).to(torch.int32)
    order = torch.argsort(keep.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    mask = BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=block, mask_mod=lambda b, h, i, j: j <= i,
                                    seq_lengths=(seqlen, seqlen))
    compiled = torch.compile(flex_attention, dynamic=False)
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    return cuda_ms(lambda: compiled(qh, kh, vh, block_mask=mask), repeat=repeat)


def run_case(case: Case, q, k, v, baselines: dict, *, error_rows: int = 256, repeat: int = 7,
             flex_sparse: bool = True) -> dict:
    """Check, then time, the operator on one case. Returns one JSON-able result row."""
    config = SampleAttentionConfig(alpha=case.alpha, window_ratio=case.window_ratio,
                                   sample_ratio=case.sample_ratio, gqa_granularity=case.gqa_granularity,
                                   dense_below=0)
    row: dict = dataclasses.asdict(case)
    started = time.perf_counter()
    p = plan(q, k, config)
    out = sparse_attention(q, k, v, p)
    torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - started  # includes Triton compiles on a new shape
    rows = torch.randperm(case.seqlen, device="cuda")[:error_rows].sort().values
    rows[-1] = case.seqlen - 1
    exact = attention_rows_ref(q, k, v, rows)
    row["error"] = relative_error(out[:, rows], exact)
    row["error_vs_own_plan"] = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
    row["check_ok"] = bool(row["error_vs_own_plan"] < 2e-2 and not torch.isnan(out).any())
    row["density"] = p.mean_density
    row["retained_mean"] = float(p.retained_mean.mean())
    row["retained_min"] = float(p.retained_min.min())
    row["selected_columns_mean"] = float(p.n_selected.float().mean())
    del out, exact
    row["plan_ms"] = cuda_ms(lambda: plan(q, k, config), repeat=repeat)
    row["attention_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, p), repeat=repeat)
    row["total_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, plan(q, k, config)), repeat=repeat)
    row["plan_share"] = row["plan_ms"] / row["total_ms"]
    visible = case.seqlen * (case.seqlen + 1) / 2
    computed = p.density.mean().item() * visible * case.batch * q.shape[2]
    row["attention_tflops"] = 4 * q.shape[3] * computed / (row["attention_ms"] * 1e-3) / 1e12
    for name in ("cudnn", "flash", "flex"):
        base = baselines.get(name)
        row[f"{name}_ms"] = base
        row[f"speedup_vs_{name}"] = (base / row["total_ms"]) if isinstance(base, float) else None
    if flex_sparse and not case.full_density:
        try:
            row["flex_block_sparse_ms"] = flex_block_sparse_ms(q, k, v, p, repeat=repeat)
        except Exception as error:
            row["flex_block_sparse_ms"] = f"{type(error).__name__}: {str(error)[:120]}"
    return row


def extra_memory_gib(q, k, v, config: SampleAttentionConfig) -> tuple[float, float]:
    """Peak device memory of one operator call beyond its inputs and output, in GiB, and that
    as a fraction of the inputs' size."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = sparse_attention(q, k, v, plan(q, k, config))
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()
    inputs = sum(t.numel() * t.element_size() for t in (q, k, v))
    return peak / 2**30, peak / inputs


def attention_flops(seqlen: int, nheads_q: int, head_dim: int, batch: int = 1) -> float:
    """FLOPs of dense causal attention: 2 * 2 * S^2 * D * H / 2."""
    return 2 * 2 * seqlen * seqlen * head_dim * nheads_q * batch / 2


def to_json(rows: list[dict]) -> str:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value

    return json.dumps([{k: clean(v) for k, v in r.items()} for r in rows], indent=1)
