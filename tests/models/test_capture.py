"""Capture of post-RoPE q/k/v from the real SmolLM2 model during one prefill.

The checks that matter: the captured run's logits equal the normal SDPA run's (so the capture
attention computes the same thing and the causal mask was kept), and attention recomputed from
the captured q, k, v equals what the model fed to its output projection in a normal run (so the
tensors are the real post-RoPE ones).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sampleattn.models.text import calibration_windows
from sampleattn.models.capture import CAPTURE_IMPLEMENTATION, capture_qkv

LENGTH = 256


@pytest.fixture(scope="module")
def window(smollm2, essays):
    _, tokenizer = smollm2
    return calibration_windows(tokenizer, essays, LENGTH, 1, seed=0)[0][None]  # (1, 256)


@pytest.fixture(scope="module")
def normal_run(smollm2, window):
    """Logits and layer-0 attention output (input of o_proj) of a plain SDPA prefill."""
    model, _ = smollm2
    assert model.config._attn_implementation == "sdpa"
    seen = {}
    hook = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, args: seen.setdefault("o", args[0].clone())
    )
    try:
        with torch.inference_mode():
            logits = model(input_ids=window, use_cache=False).logits
    finally:
        hook.remove()
    return logits, seen["o"]


@pytest.fixture(scope="module")
def captured(smollm2, window):
    model, _ = smollm2
    return capture_qkv(model, window, layers=[0, 7, 29])


def _sdpa_flash(q, k, v, *, causal=True):
    """Attention on flash-layout tensors: q (b, s, hq, d), k/v (b, s, hkv, d) -> (b, s, hq, d)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=True
    )
    return out.transpose(1, 2)


def test_shapes_and_layers(captured):
    assert captured.layers == [0, 7, 29] and sorted(captured.qkv) == [0, 7, 29]
    for entry in captured.qkv.values():
        assert entry["q"].shape == (1, LENGTH, 9, 64)
        assert entry["k"].shape == (1, LENGTH, 3, 64)
        assert entry["v"].shape == (1, LENGTH, 3, 64)
        assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in entry.values())
    assert captured.logits.shape == (1, LENGTH, 49152)


def test_logits_equal_the_normal_run(captured, normal_run, smollm2):
    logits, _ = normal_run
    assert (captured.logits - logits).abs().max().item() <= 1e-5
    model, _ = smollm2
    assert model.config._attn_implementation == "sdpa"  # restored after the capture


def test_captured_qkv_reproduce_the_models_attention(captured, normal_run):
    """Causal attention of the captured layer-0 q, k, v equals what o_proj received in the normal run."""
    _, o_normal = normal_run  # (1, 256, 9 * 64)
    layer0 = captured.qkv[0]
    recomputed = _sdpa_flash(layer0["q"], layer0["k"], layer0["v"]).reshape(1, LENGTH, -1)
    assert (recomputed - o_normal).abs().max().item() <= 1e-5
    # The comparison is sensitive: dropping the causal mask changes the output by far more.
    unmasked = _sdpa_flash(layer0["q"], layer0["k"], layer0["v"], causal=False).reshape(1, LENGTH, -1)
    assert (unmasked - o_normal).abs().max().item() > 1e-2


def test_keys_are_post_rope(captured, smollm2, window):
    """The captured keys are k_proj(x) rotated by position: pre-RoPE keys would differ beyond position 0."""
    model, _ = smollm2
    attn = model.model.layers[0].self_attn
    with torch.inference_mode():
        hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(window))
        k_pre = attn.k_proj(hidden).view(1, LENGTH, 3, 64)
    k = captured.qkv[0]["k"]
    assert torch.allclose(k[:, 0], k_pre[:, 0], atol=1e-5)  # RoPE is the identity at position 0
    assert not torch.allclose(k[:, 1:], k_pre[:, 1:], atol=1e-2)
    assert torch.allclose(k.norm(dim=-1), k_pre.norm(dim=-1), rtol=1e-4)  # a rotation keeps norms


def test_options(smollm2, window, captured):
    model, _ = smollm2
    streamed = {}
    positions = torch.tensor([0, 100, LENGTH - 1])
    result = capture_qkv(
        model,
        window[0],
        layers=[7],
        dtype=torch.float16,
        outputs=True,
        logit_positions=positions,
        on_layer=lambda i, t: streamed.setdefault(i, t),
    )
    assert result.qkv == {} and list(streamed) == [7] and result.layers == [7]
    entry = streamed[7]
    assert entry["q"].dtype == torch.float16 and entry["o"].shape == (1, LENGTH, 9, 64)
    torch.testing.assert_close(entry["k"].float(), captured.qkv[7]["k"], rtol=2e-3, atol=2e-3)
    assert result.logits.shape == (1, 3, 49152)
    torch.testing.assert_close(
        result.logits[0], captured.logits[0, positions], rtol=1e-4, atol=1e-4
    )  # other matmul shapes


def test_without_logits(smollm2, window, captured):
    model, _ = smollm2
    result = capture_qkv(model, window, layers=[29], with_logits=False)
    assert result.logits is None
    assert torch.equal(result.qkv[29]["v"], captured.qkv[29]["v"])


def test_errors(smollm2, window):
    model, _ = smollm2
    with pytest.raises(ValueError, match="out of range"):
        capture_qkv(model, window, layers=[30])
    with pytest.raises(ValueError, match="expected"):
        capture_qkv(model, window[None])
    with pytest.raises(ValueError, match="logit_positions"):
        capture_qkv(model, window, logit_positions=[LENGTH])
    assert model.config._attn_implementation == "sdpa"
    assert CAPTURE_IMPLEMENTATION == "sampleattn_capture"
