"""The operator under torch.compile (inductor) and in a CUDA graph on a CUDA GPU, against eager,
and the time of eager calls against graph replay (``compile_check.json`` with ``--gpu-out``).

The compile checks on the CPU (eager backend, the interpreter) are tests/test_compile.py.
"""

from __future__ import annotations

import time

import pytest
import torch

from sampleattn import SampleAttention, SampleAttentionConfig, plan, sample_attention
from sampleattn.ops import op_arguments, sample_attention_op
from sampleattn.reference import relative_error
from sampleattn.synthetic import structured_qkv
from sampleattn.timing import cuda_ms

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU: run `pytest -m gpu tests/gpu` there")]

#: (name, heads q, heads kv, head dim, length), bf16.
CASES = [("smollm2", 9, 3, 64, 8192), ("smollm2", 9, 3, 64, 16384), ("llama3", 32, 8, 128, 32768)]
#: Relative L2 error allowed against eager: the paths run the same deterministic kernels, so the
#: outputs are expected bitwise equal; the tolerance only keeps the check robust.
TOLERANCE = 1e-3
GRANULARITIES = ["query_head", "kv_head"]


def _name(case) -> str:
    name, hq, hkv, d, n = case
    return f"{name} {hq}/{hkv} d{d} {n // 1024}K"


def _config(granularity: str) -> SampleAttentionConfig:
    return SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0,
                                 gqa_granularity=granularity)


def _inputs(case, seed):
    _, hq, hkv, d, n = case
    return structured_qkv(1, n, n, hq, hkv, d, dtype=torch.bfloat16, device="cuda", seed=seed)


def _compare(out, ref) -> dict:
    return {"rel_error": relative_error(out, ref), "bitwise_equal": out.shape == ref.shape and bool(torch.equal(out, ref))}


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("form", ["json", "module", "config"])
@pytest.mark.parametrize("case", CASES, ids=_name)
def test_inductor_fullgraph_matches_eager(case, form, granularity, gpu_results):
    """How the compiled function reaches the op: a JSON string made outside the compiled region,
    `SampleAttention(as_custom_op=True)` (what a model holds), or the config object itself (needs
    a torch whose Dynamo runs `assume_constant_result` on a pydantic object: 2.13 can, 2.11 not)."""
    if form == "config" and torch.__version__ < "2.13":
        pytest.skip("config objects need torch >= 2.13 under torch.compile; pass op_arguments(config)[0]")
    config = _config(granularity)
    q, k, v = _inputs(case, seed=0)
    if form == "json":
        config_json = op_arguments(config)[0]

        def attention(q, k, v):
            return sample_attention_op(q, k, v, config_json)
    elif form == "module":
        operator = SampleAttention(config, as_custom_op=True)

        def attention(q, k, v):
            return operator(q, k, v, layer=0)
    else:
        def attention(q, k, v):
            return sample_attention_op(q, k, v, config)

    torch._dynamo.reset()
    started = time.perf_counter()
    out = torch.compile(attention, fullgraph=True, dynamic=False, backend="inductor")(q, k, v)
    row = {"check": f"compile[inductor, {form}] {_name(case)} {granularity}", "compile_s": time.perf_counter() - started,
           **_compare(out, sample_attention(q, k, v, config))}
    gpu_results("compile_check", row)
    assert row["rel_error"] <= TOLERANCE


def _capture(fn, warmup):
    """Warm up on a side stream (PyTorch's recipe), then capture ``fn()``: (graph, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            warmup()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize()
    return graph, out


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("path", ["static_kmax", "custom op, auto"])
@pytest.mark.parametrize("case", CASES, ids=_name)
def test_cuda_graph_replays_eager(case, path, granularity, request, gpu_results):
    """The whole operator captured at fixed shapes after a warm-up, replayed on the values it was
    captured with and on new ones copied into its static inputs, against eager on those values:
    with ``static_kmax=True``, and through the custom op, which takes the static width because
    the stream is capturing. With ``static_kmax``, the median times of eager (dynamic width: one
    host synchronisation), eager with the static width, and replay."""
    config = _config(granularity)
    q, k, v = _inputs(case, seed=0)
    q2, k2, v2 = _inputs(case, seed=1)
    sq, sk, sv = q.clone(), k.clone(), v.clone()  # the graph's static inputs

    def static_call():
        return sample_attention(sq, sk, sv, config, static_kmax=True)

    def op_call():  # no flag: the op sees the capturing stream and takes the static width
        return sample_attention_op(sq, sk, sv, config)

    def op_warmup():
        return sample_attention_op(sq, sk, sv, config, static_kmax=True)

    fn, warmup = (static_call, static_call) if path == "static_kmax" else (op_call, op_warmup)
    ref1, ref2 = sample_attention(q, k, v, config), sample_attention(q2, k2, v2, config)
    graph, out = _capture(fn, warmup)
    graph.replay()
    torch.cuda.synchronize()
    first = _compare(out, ref1)
    sq.copy_(q2), sk.copy_(k2), sv.copy_(v2)
    graph.replay()
    torch.cuda.synchronize()
    row = {"check": f"graph[{path}] {_name(case)} {granularity}", **_compare(out, ref2), "first_inputs": first}
    if path == "static_kmax":
        dynamic = plan(q2, k2, config)
        row["timing"] = {"case": _name(case), "granularity": granularity, "seqlen": case[4],
                         "kmax_dynamic": int(dynamic.col_idx.shape[-1]), "density": dynamic.mean_density,
                         "eager_ms": cuda_ms(lambda: sample_attention(q2, k2, v2, config), repeat=20),
                         "eager_static_ms": cuda_ms(static_call, repeat=20), "replay_ms": cuda_ms(graph.replay, repeat=20)}
        row["timing"]["speedup"] = row["timing"]["eager_ms"] / row["timing"]["replay_ms"]
    gpu_results("compile_check", row)
    assert first["rel_error"] <= TOLERANCE and row["rel_error"] <= TOLERANCE
