"""The custom op under torch.compile, its fake implementation, and the plan's static width
(`sampleattn.selection.static_kmax`: what CUDA-graph capture uses) against the dynamic one.

CPU: the kernels run under TRITON_INTERPRET=1 (tests/conftest.py). The CUDA-graph capture
itself runs on a GPU only: ``pytest -m gpu tests/gpu/test_gpu_compile.py``.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch._dynamo.testing import EagerAndRecordGraphs

from sampleattn import HeadOverride, ModelAttentionProfile, SampleAttention, SampleAttentionConfig, plan, sample_attention
from sampleattn.config import LayerOverride
from sampleattn.ops import op_arguments, sample_attention_op
from sampleattn.selection import static_kmax, uses_static_kmax

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

OP = torch.ops.sampleattn.sample_attention.default
CONFIG = SampleAttentionConfig(alpha=0.9, window_ratio=0.08, sample_ratio=0.1, dense_below=0)


def qkv(seqlen_q=300, seqlen_k=300, hq=4, hkv=2, d=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, seqlen_q, hq, d, generator=g)
    k = torch.randn(1, seqlen_k, hkv, d, generator=g)
    v = torch.randn(1, seqlen_k, hkv, d, generator=g)
    k[:, :3] += 2.0  # a few heavy columns, so the selection keeps some and drops others
    return (t.to(DEVICE, dtype) for t in (q, k, v))


def ops_in(graphs) -> list:
    return [node.target for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]


@pytest.mark.parametrize("form", [
    "json",
    pytest.param("config", marks=pytest.mark.skipif(
        torch.__version__ < "2.13", reason="Dynamo before torch 2.13 cannot run assume_constant_result on a "
                                           "pydantic config (seen on 2.11); pass op_arguments(config)[0]")),
])
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend, form):
    q, k, v = qkv() if backend == "eager" else qkv(seqlen_q=128, seqlen_k=300)
    recorder = EagerAndRecordGraphs()
    config = op_arguments(CONFIG)[0] if form == "json" else CONFIG

    def model(q, k, v):  # nothing around the op: inductor then needs no C++ compiler
        return sample_attention_op(q, k, v, config)

    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True, backend=recorder if backend == "eager" else backend)(q, k, v)
    expected = sample_attention(q, k, v, CONFIG)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if backend == "eager":
        assert len(recorder.graphs) == 1 and OP in ops_in(recorder.graphs)


def test_compiled_operator_with_layer_and_head_overrides():
    profile = ModelAttentionProfile(config=CONFIG, layers={
        1: LayerOverride(alpha=0.6, heads={2: HeadOverride(alpha=0.99, window_ratio=0.3)}),
    })
    eager = SampleAttention(profile)
    as_op = SampleAttention(profile, as_custom_op=True)
    q, k, v = qkv(seqlen_q=128, seqlen_k=256)
    compiled = torch.compile(lambda q, k, v, layer: as_op(q, k, v, layer=layer), fullgraph=True, backend="eager")
    torch._dynamo.reset()
    outs = [compiled(q, k, v, layer) for layer in (0, 1)]
    for layer, out in enumerate(outs):
        torch.testing.assert_close(out, eager(q, k, v, layer=layer), rtol=0, atol=0)
    assert not torch.equal(outs[0], outs[1])  # the overrides reached the op
    with pytest.raises(ValueError, match="output only"):
        as_op(q, k, v, return_lse=True)


def test_head_overrides_under_compile_need_a_string():
    heads = {1: HeadOverride(alpha=0.5)}
    q, k, v = qkv(seqlen_q=64, seqlen_k=256)
    eager = sample_attention(q, k, v, CONFIG, heads=heads)
    torch.testing.assert_close(sample_attention_op(q, k, v, CONFIG, heads=heads), eager, rtol=0, atol=0)
    heads_json = op_arguments(CONFIG, heads)[1]
    compiled = torch.compile(lambda q, k, v: sample_attention_op(q, k, v, CONFIG, heads=heads_json),
                             fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), eager, rtol=0, atol=0)
    with pytest.raises(Exception, match="op_arguments"):
        torch.compile(lambda q, k, v: sample_attention_op(q, k, v, CONFIG, heads=heads),
                      fullgraph=True, backend="eager")(q, k, v)


@pytest.mark.parametrize("dense_below", [0, 10_000], ids=["sparse", "dense"])
def test_opcheck(dense_below):
    """torch.library.opcheck: schema, fake tensor (shape, dtype, strides), AOT dispatch."""
    q, k, v = qkv(seqlen_q=20, seqlen_k=100)
    config_json, heads_json = op_arguments(CONFIG.model_copy(update={"dense_below": dense_below}),
                                           {0: HeadOverride(window_ratio=0.2)})
    torch.library.opcheck(OP, (q, k, v, config_json, heads_json, 0.1, "auto", False))


def test_fake_gives_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 4096, 32, 128, dtype=torch.float16)
        k = torch.empty(2, 8192, 8, 128, dtype=torch.float16)
        out = sample_attention_op(q, k, torch.empty_like(k), CONFIG)
    assert out.shape == (2, 4096, 32, 128) and out.dtype == torch.float16


def test_static_kmax_switch():
    cpu = torch.device("cpu")
    assert not uses_static_kmax(cpu)
    with static_kmax():
        assert uses_static_kmax(cpu)
        with static_kmax(False):
            assert not uses_static_kmax(cpu)
        assert uses_static_kmax(cpu)
    assert not uses_static_kmax(cpu)


@pytest.mark.parametrize("granularity,segment_rows,seqlen_q,run,selection", [
    ("query_head", None, 200, True, "sampled"), ("kv_head", None, 97, True, "sampled"),
    ("query_head", 128, 300, False, "sampled"), ("kv_head", 128, 256, False, "sampled"),
    ("kv_head", None, 200, False, "rescored"),
])
def test_static_kmax_plan_and_output_equal_dynamic(granularity, segment_rows, seqlen_q, run, selection):
    config = CONFIG.model_copy(update={"gqa_granularity": granularity, "segment_rows": segment_rows,
                                       "selection": selection})
    q, k, v = qkv(seqlen_q=seqlen_q, seqlen_k=300, seed=1)
    heads = {3: HeadOverride(alpha=0.99)}
    dynamic = plan(q, k, config, heads=heads)
    with static_kmax():
        static = plan(q, k, config, heads=heads)
    kmax = dynamic.col_idx.shape[-1]
    assert kmax < 300 and static.col_idx.shape[-1] == 304  # the widths differ (Sk, padded to 16)...
    assert torch.equal(static.col_count, dynamic.col_count)  # ...the selection does not
    assert torch.equal(static.col_idx[..., :kmax], dynamic.col_idx)
    assert bool((static.col_idx[..., kmax:] == 300).all())
    for name in ("retained_mean", "retained_min", "density"):
        assert torch.equal(getattr(static, name), getattr(dynamic, name)), name
    if run:  # stage 3 (slow under the interpreter): the whole operator, static against dynamic
        out_dynamic = sample_attention(q, k, v, config, heads=heads)
        out_static = sample_attention_op(q, k, v, config, heads=heads, static_kmax=True)
        assert torch.equal(out_static, out_dynamic)


def test_static_kmax_reaches_the_reference_plan():
    q, k, v = qkv(seqlen_q=64, seqlen_k=128)
    dynamic, plan_dynamic = sample_attention(q, k, v, CONFIG, backend="torch", return_plan=True)
    static, plan_static = sample_attention(q, k, v, CONFIG, backend="torch", return_plan=True, static_kmax=True)
    assert plan_static.col_idx.shape[-1] == 128 > plan_dynamic.col_idx.shape[-1]
    assert torch.equal(static, dynamic)


class HostRead(RuntimeError):
    pass


@pytest.fixture
def forbid_host_reads(monkeypatch):
    """Make every read of a tensor's value on the host, from sampleattn's own code, raise."""
    def guard(name):
        original = getattr(torch.Tensor, name)

        def checked(self, *args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("sampleattn"):
                raise HostRead(f"Tensor.{name} called by {sys._getframe(1).f_code.co_name}")
            return original(self, *args, **kwargs)
        return checked

    for name in ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))


def test_static_path_reads_nothing_back(request):
    """After a warm-up call (the shape set-up is cached), the static path never synchronises:
    what a CUDA graph needs. The dynamic path does, once, so the guard is known to work."""
    config = CONFIG.model_copy(update={"gqa_granularity": "kv_head"})
    q, k, v = qkv(seqlen_q=128, seqlen_k=256)
    expected = sample_attention(q, k, v, config, static_kmax=True)  # warm-up
    request.getfixturevalue("forbid_host_reads")
    out = sample_attention(q, k, v, config, static_kmax=True)
    assert torch.equal(out, expected)
    with pytest.raises(HostRead, match="select_columns"):
        sample_attention(q, k, v, config)
