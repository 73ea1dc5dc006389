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
from typing import Any

import torch

from sampleattn.timing import cuda_ms, device_ms, wall_ms

from sampleattn import Geometry, SampleAttentionConfig, plan, sample_attention, sparse_attention
from sampleattn.models.catalog import CATALOG
from sampleattn.reference import attention_rows_ref, relative_error

__all__ = ["GEOMETRIES", "Case", "run_case", "make_inputs", "dense_baselines", "capture_smollm2",
           "geometry_name", "smollm2_to_geometry", "compiled_kernel_count"]


#: The geometries the benchmarks run in, by the name their rows and ``--geometry`` use: the model
#: catalogue's geometry of each model.
GEOMETRIES: dict[str, Geometry] = {
    name: CATALOG[model].geometry for name, model in
    (("llama3", "llama3"), ("chatglm2", "chatglm2"), ("smollm2", "smollm2-135m"))
}


def geometry_name(heads: tuple[int, int, int]) -> str:
    """The name in `GEOMETRIES` of the geometry with these ``(num_q_heads, num_kv_heads,
    head_dim)`` (`Geometry.heads`; the layers do not count), or ``"Hq/Hkv/dD"`` outside it."""
    return next((name for name, known in GEOMETRIES.items() if known.heads == tuple(heads)),
                "{}/{}/d{}".format(*heads))


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
    #: further `SampleAttentionConfig` fields as ``((name, value), ...)``, e.g. (("selection", "rescored"),)
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def full_density(self) -> bool:
        return self.alpha >= 1.0 and self.window_ratio >= 1.0

    def config(self) -> SampleAttentionConfig:
        """The operator's config for this case (``dense_below=0``: always the sparse path)."""
        return SampleAttentionConfig(alpha=self.alpha, window_ratio=self.window_ratio,
                                     sample_ratio=self.sample_ratio, gqa_granularity=self.gqa_granularity,
                                     dense_below=0, **dict(self.options))


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def compiled_kernel_count() -> int | None:
    """Compiled variants of the `sampleattn.kernels` Triton functions held in Triton's in-memory
    caches (all devices): a new length that adds none did not recompile. None under the
    interpreter or where Triton keeps its caches elsewhere."""
    import sys

    total, seen = 0, set()
    try:
        for name, module in list(sys.modules.items()):
            if not name.startswith("sampleattn.kernels") or module is None:
                continue
            for value in vars(module).values():
                # An Autotuner/Heuristics wraps the JITFunction in `.fn`; the JITFunction's own
                # `.fn` is the Python function, so unwrap only until the caches appear.
                fn = value
                while not hasattr(fn, "device_caches") and hasattr(fn, "fn"):
                    fn = fn.fn
                caches = getattr(fn, "device_caches", None)
                if caches is None or id(fn) in seen:
                    continue
                seen.add(id(fn))
                total += sum(len(entry[0]) for entry in caches.values())
    except Exception:  # a Triton whose internals differ: no count rather than a crash
        return None
    return total if seen else None


def compiled_between(before: int | None, after: int | None) -> int | None:
    """Kernels compiled between two `compiled_kernel_count` readings. Before a process's first
    operator call the kernel modules are not imported yet and the count is None: none of their
    variants existed, so that counts as 0. None when the count after is unknown too."""
    if after is None:
        return None
    return after - (before or 0)


def make_inputs(geometry: Geometry, seqlen: int, batch: int, inputs: str, *, density: float = 0.01,
                seed: int = 0, dtype=torch.bfloat16, device: str | torch.device = "cuda"):
    """q (B, S, Hq, D), k/v (B, S, Hkv, D) in ``geometry``: the structured generator, or real
    q/k/v captured from SmolLM2 ("smollm2-layerN", RoPE-scaled beyond its 8K context).

    Real inputs in a geometry other than SmolLM2's own (9/3 heads, d64) are built by
    `smollm2_to_geometry` from layers N, N+1, ... (see there for what is real and what is not)."""
    if inputs == "synthetic":
        from sampleattn.synthetic import structured_qkv

        return structured_qkv(batch, seqlen, seqlen, geometry.num_q_heads, geometry.num_kv_heads, geometry.head_dim,
                              density=density, dtype=dtype, device=device, seed=seed)
    if inputs.startswith("smollm2-layer"):
        layer = int(inputs.removeprefix("smollm2-layer"))
        layers = smollm2_layers_for(geometry, layer)
        captured = capture_smollm2(seqlen, layers, batch=batch, seed=seed, device=device)
        return smollm2_to_geometry(captured, layers, geometry, seed=seed, dtype=dtype)
    raise ValueError(f"inputs={inputs!r}; choose 'synthetic' or 'smollm2-layerN'")


#: SmolLM2-135M's attention geometry and depth (sampleattn.models.catalog "smollm2-135m").
SMOLLM2 = GEOMETRIES["smollm2"]
SMOLLM2_LAYERS = SMOLLM2.num_layers

_smollm2_cache: dict[str, Any] = {}


def smollm2_layers_for(geometry: Geometry, layer: int) -> list[int]:
    """The SmolLM2 layers whose KV heads make up ``geometry``'s KV heads: ``layer`` alone in
    SmolLM2's own geometry, else ``layer, layer + 1, ...`` (3 KV heads each) until there are
    enough (Llama-3-8B's 8 KV heads: 3 layers), shifted down so that they exist."""
    if layer < 0 or layer >= SMOLLM2_LAYERS:
        raise ValueError(f"SmolLM2 has layers 0..{SMOLLM2_LAYERS - 1}; got {layer}")
    if geometry.heads == SMOLLM2.heads:
        return [layer]
    count = -(-geometry.num_kv_heads // SMOLLM2.num_kv_heads)
    first = min(layer, SMOLLM2_LAYERS - count)
    return list(range(first, first + count))


def _smollm2_model(seqlen: int, device: str | torch.device):
    """SmolLM2-135M (bf16 on ``device``) with RoPE set up for ``seqlen`` tokens, and its tokenizer.

    Loaded once per process; for a new length only the RoPE parameters change (the same
    `configure_rope` that `load_model(max_length=...)` applies, then a new rotary embedding), so
    a benchmark over seven lengths reads and dequantises the GGUF once, not seven times."""
    import copy

    from sampleattn.models.catalog import get_model_spec
    from sampleattn.models.loading import configure_rope, load_model

    spec = get_model_spec("smollm2-135m")
    key = str(torch.device(device))
    if _smollm2_cache.get("device") != key:
        _smollm2_cache.clear()
        model, tokenizer = load_model(spec, device=device, dtype=torch.bfloat16)
        _smollm2_cache.update(device=key, model=model, tokenizer=tokenizer, seqlen=None,
                              rope=copy.deepcopy(getattr(model.config, "rope_parameters", None)),
                              max_pos=model.config.max_position_embeddings)
    model = _smollm2_cache["model"]
    if _smollm2_cache["seqlen"] != seqlen:
        config = model.config
        config.rope_parameters = copy.deepcopy(_smollm2_cache["rope"])  # back to the trained RoPE
        config.max_position_embeddings = _smollm2_cache["max_pos"]
        scaling = configure_rope(config, spec, max_length=seqlen)
        rotary = model.model.rotary_emb
        model.model.rotary_emb = type(rotary)(config=config).to(device)
        _smollm2_cache.update(seqlen=seqlen, scaling=scaling)
    return model, _smollm2_cache["tokenizer"], _smollm2_cache.get("scaling")


def capture_smollm2(seqlen: int, layers: list[int], *, batch: int = 1, seed: int = 0,
                    device: str | torch.device = "cuda") -> dict[int, dict[str, torch.Tensor]]:
    """Post-RoPE q/k/v (bf16, SmolLM2's geometry) of ``layers`` in one prefill of ``seqlen``
    tokens of the essays (read circularly: the text is about 170K tokens, so 1M tokens repeat it
    about six times). The prefill stops after the deepest layer asked for (the layers above do
    not change the captured ones), so a capture at layer 16 costs 17 layers of attention."""
    from sampleattn.models.text import calibration_windows, essays_text
    from sampleattn.models.capture import capture_qkv

    model, tokenizer, _ = _smollm2_model(seqlen, device)
    ids = calibration_windows(tokenizer, essays_text(), seqlen, batch, seed)
    ids = torch.stack(list(ids)).view(batch, seqlen).to(device)
    full = model.model.layers
    model.model.layers = full[: max(layers) + 1]
    try:
        captured = capture_qkv(model, ids, layers=layers, with_logits=False)
    finally:
        model.model.layers = full
    result = {}
    for layer in layers:
        qkv = captured.qkv.pop(layer)
        result[layer] = {name: qkv[name].to(torch.bfloat16).contiguous() for name in ("q", "k", "v")}
    return result


def smollm2_rope_scaling() -> dict | None:
    """The RoPE scaling of the last SmolLM2 capture (None: within its trained 8K context)."""
    return _smollm2_cache.get("scaling")


def smollm2_to_geometry(captured: dict, layers: list[int], geometry: Geometry, *, seed: int = 0,
                        dtype=torch.bfloat16):
    """Real SmolLM2 q/k/v laid out in ``geometry`` (batch, seqlen, heads, head_dim).

    In SmolLM2's own geometry: the layer's tensors as captured. In another geometry (Llama-3-8B:
    32 query heads, 8 KV heads, d128), built so that every head's attention logits are exactly
    those of a real SmolLM2 head (up to bf16 rounding):

    * KV head g is a distinct real KV head: layer ``layers[g // 3]``, KV head ``g % 3`` (Llama's 8
      = 3 + 3 + 2 heads of three consecutive layers).
    * Its query heads are that KV head's 3 real query heads, repeated cyclically when the target
      group is larger (Llama's group of 4: the 4th query head duplicates the 1st). Not real:
      duplicated heads add no new attention pattern.
    * Head dim 64 -> 128: q and k are zero-padded and multiplied by ``(128 / 64) ** 0.25`` so that
      ``q.k / sqrt(128)`` equals SmolLM2's ``q.k / sqrt(64)``, then both are turned by one random
      orthogonal matrix per KV head (logits unchanged; no coordinate stays zero).
    * v (d128) is the KV head's real v next to the next KV head's real v, turned the same way.

    So the attention patterns (sinks, stripes, locality, density per head) are SmolLM2's, at
    Llama's head count and head dim; the timing of dense baselines does not depend on values.
    """
    if geometry.heads == SMOLLM2.heads:
        qkv = captured[layers[0]]
        return tuple(qkv[name].to(dtype).contiguous() for name in ("q", "k", "v"))
    if geometry.head_dim < SMOLLM2.head_dim:
        raise ValueError(f"cannot lay SmolLM2's heads out in {geometry}: its head dim is below SmolLM2's "
                         f"{SMOLLM2.head_dim}")
    kv_heads = [(layer, h) for layer in layers for h in range(SMOLLM2.num_kv_heads)][: geometry.num_kv_heads]
    if len(kv_heads) < geometry.num_kv_heads:
        raise ValueError(f"{len(kv_heads)} captured KV heads, {geometry_name(geometry.heads)} needs "
                         f"{geometry.num_kv_heads}")
    sample = captured[layers[0]]["q"]
    batch, seqlen, device = sample.shape[0], sample.shape[1], sample.device
    d_src, d = SMOLLM2.head_dim, geometry.head_dim
    group_src, group = SMOLLM2.group_size, geometry.group_size
    gain = (d / d_src) ** 0.25
    gen = torch.Generator().manual_seed(int(seed) + 12345)
    q = torch.empty(batch, seqlen, geometry.num_q_heads, d, dtype=dtype, device=device)
    k = torch.empty(batch, seqlen, geometry.num_kv_heads, d, dtype=dtype, device=device)
    v = torch.empty(batch, seqlen, geometry.num_kv_heads, d, dtype=dtype, device=device)
    chunk = 1 << 16  # rotate in chunks of rows: fp32 temporaries stay small at 1M tokens

    def turn(x: torch.Tensor, rot: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        for start in range(0, seqlen, chunk):
            part = x[:, start:start + chunk].float() * scale
            if part.shape[-1] < d:
                part = torch.nn.functional.pad(part, (0, d - part.shape[-1]))
            out[:, start:start + chunk] = (part @ rot).to(dtype)

    for g, (layer, h) in enumerate(kv_heads):
        rot = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64)).Q.float().to(device)
        src = captured[layer]
        turn(src["k"][:, :, h], rot, gain, k[:, :, g])
        nxt_layer, nxt_h = kv_heads[(g + 1) % len(kv_heads)]
        v_pair = torch.cat([src["v"][:, :, h], captured[nxt_layer]["v"][:, :, nxt_h]], dim=-1)[..., :d]
        turn(v_pair, rot, 1.0, v[:, :, g])
        for j in range(group):
            turn(src["q"][:, :, h * group_src + j % group_src], rot, gain, q[:, :, g * group + j])
    return q, k, v



def dense_baselines(q, k, v, *, repeat: int, flex: bool, warmup: int = 2,
                    backends: tuple[str, ...] = ("cudnn", "flash")) -> dict[str, float | str | None]:
    """Times of SDPA cuDNN, SDPA flash and FlexAttention (dense causal) on the same inputs.

    On the CPU (dry runs only) the SDPA backends do not exist: PyTorch's default SDPA is timed
    in their place, with ``"substitute"`` saying so, so that every code path still runs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = q.device
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    times: dict[str, float | str | None] = {}
    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    for name in backends:
        if device.type != "cuda":
            times[name] = wall_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True),
                                  warmup=warmup, repeat=repeat)
            times["substitute"] = "CPU dry run: PyTorch's default SDPA timed in place of cuDNN/flash"
            continue
        try:
            with sdpa_kernel(kinds[name]):
                times[name] = cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True),
                                      warmup=warmup, repeat=repeat)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            times[name] = None
            times[name + "_error"] = f"{type(error).__name__}: {str(error)[:120]}"
    if flex and device.type == "cuda":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            compiled = torch.compile(flex_attention, dynamic=False)
            mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, q.shape[1], k.shape[1],
                                     device="cuda", _compile=True)
            times["flex"] = cuda_ms(lambda: compiled(qh, kh, vh, block_mask=mask), warmup=warmup, repeat=repeat)
        except Exception as error:  # FlexAttention's limits are reported in the table, not fatal
            times["flex"] = None
            times["flex_error"] = f"{type(error).__name__}: {str(error)[:120]}"
    del qh, kh, vh
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


def error_rows_for(seqlen: int, n_rows: int) -> torch.Tensor:
    """The query rows (int64, sorted, the last row included) on which every case of one length
    measures its error: drawn from a generator seeded by the length, so that two configurations
    compared at a length (the alpha-0.99 rule, the window x sample grid) are compared on the
    same rows, in every run."""
    gen = torch.Generator().manual_seed(1_000_003 + seqlen)
    rows = torch.randperm(seqlen, generator=gen)[:n_rows].sort().values
    rows[-1] = seqlen - 1
    return rows


def run_case(case: Case, q, k, v, baselines: dict, *, error_rows: int = 256, repeat: int = 7,
             flex_sparse: bool = True, warmup: int = 2) -> dict:
    """Check, then time, the operator on one case. Returns one JSON-able result row.

    Works on the CPU too (dry runs: the kernels under TRITON_INTERPRET=1, wall-clock times)."""
    config = case.config()
    device = q.device
    row: dict = dataclasses.asdict(case)
    row["options"] = dict(case.options)
    compiled_before = compiled_kernel_count()
    started = time.perf_counter()
    p = plan(q, k, config)
    out = sparse_attention(q, k, v, p)
    _sync(device)
    row["first_call_s"] = time.perf_counter() - started  # includes Triton compiles on a new shape
    compiled_after = compiled_kernel_count()
    row["kernels_compiled"] = compiled_between(compiled_before, compiled_after)
    rows = error_rows_for(case.seqlen, error_rows).to(device)
    exact = attention_rows_ref(q, k, v, rows)
    row["error"] = relative_error(out[:, rows], exact)
    row["error_vs_own_plan"] = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
    row["check_ok"] = bool(row["error_vs_own_plan"] < 2e-2 and not torch.isnan(out).any())
    row["density"] = p.mean_density
    row["retained_mean"] = float(p.retained_mean.mean())
    row["retained_min"] = float(p.retained_min.min())
    row["selected_columns_mean"] = float(p.n_selected.float().mean())
    del out, exact
    timer = dict(warmup=warmup, repeat=repeat)
    # The operator's own path: sample_attention plans without the retained-mass reports.
    row["plan_ms"] = device_ms(lambda: plan(q, k, config, reports=False), device, **timer)
    row["plan_with_reports_ms"] = device_ms(lambda: plan(q, k, config), device, **timer)
    row["attention_ms"] = device_ms(lambda: sparse_attention(q, k, v, p), device, **timer)
    row["total_ms"] = device_ms(lambda: sample_attention(q, k, v, config), device, **timer)
    row["plan_share"] = row["plan_ms"] / row["total_ms"]
    visible = case.seqlen * (case.seqlen + 1) / 2
    computed = p.density.mean().item() * visible * case.batch * q.shape[2]
    row["attention_tflops"] = 4 * q.shape[3] * computed / (row["attention_ms"] * 1e-3) / 1e12
    for name in ("cudnn", "flash", "flex"):
        base = baselines.get(name)
        row[f"{name}_ms"] = base
        row[f"speedup_vs_{name}"] = (base / row["total_ms"]) if isinstance(base, float) else None
    for extra in ("substitute", "cudnn_source"):
        if extra in baselines:
            row[extra] = baselines[extra]
    if flex_sparse and not case.full_density and device.type == "cuda":
        try:
            row["flex_block_sparse_ms"] = flex_block_sparse_ms(q, k, v, p, repeat=repeat)
        except Exception as error:
            row["flex_block_sparse_ms"] = f"{type(error).__name__}: {str(error)[:120]}"
    del p
    return row


def extra_memory_gib(q, k, v, config: SampleAttentionConfig) -> tuple[float | None, float | None]:
    """Peak device memory of one operator call beyond its inputs and output, in GiB, and that
    as a fraction of the inputs' size (None, None on the CPU)."""
    if q.device.type != "cuda":
        return None, None
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
