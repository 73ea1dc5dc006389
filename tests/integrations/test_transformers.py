"""The transformers integration on the real SmolLM2-135M (CPU, float32, <= 1K tokens)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sampleattn import SampleAttention, SampleAttentionConfig
from sampleattn.integrations.transformers import (
    IMPLEMENTATION, attention_implementation, patch_model, register,
)


def exact_operator() -> SampleAttention:
    """A config under which SampleAttention's sparse path is exact at these lengths (below 100K
    keys the window, ``ceil(0.99999 * seqlen_k)``, holds every key); a config that keeps every
    key by construction (alpha 1, window 1) would run dense attention, not the sparse path."""
    return SampleAttention(SampleAttentionConfig(alpha=0.5, window_ratio=0.99999, dense_below=0), backend="torch")


def sparse_operator(alpha: float = 0.95) -> SampleAttention:
    return SampleAttention(SampleAttentionConfig(alpha=alpha, dense_below=0), backend="torch")


def kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean per-token KL(ref || other) in nats."""
    lp = torch.log_softmax(ref_logits.float(), -1)
    lq = torch.log_softmax(logits.float(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.fixture(scope="module")
def reference_logits(smollm2, window_1k):
    model, _ = smollm2
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        return model(window_1k).logits


def test_exact_config_equals_sdpa(smollm2, window_1k, reference_logits):
    model, _ = smollm2
    with torch.no_grad(), patch_model(model, exact_operator(), record=True) as handle:
        assert model.config._attn_implementation == IMPLEMENTATION
        logits = model(window_1k).logits
    assert model.config._attn_implementation == "sdpa"  # restored
    assert len(handle.records) == model.config.num_hidden_layers
    assert all(r.path == "sparse" and r.density == pytest.approx(1.0) for r in handle.records)
    torch.testing.assert_close(logits, reference_logits, atol=2e-3, rtol=1e-3)


def test_alpha_095_differs_but_stays_close(smollm2, window_1k, reference_logits):
    model, _ = smollm2
    with torch.no_grad(), patch_model(model, sparse_operator(0.95), record=True) as handle:
        logits = model(window_1k).logits
    densities = handle.densities()
    assert len(densities) == model.config.num_hidden_layers
    mean_density = sum(densities.values()) / len(densities)
    assert 0.05 < mean_density < 0.9
    divergence = kl(reference_logits, logits)
    top1 = float((logits.argmax(-1) == reference_logits.argmax(-1)).float().mean())
    assert divergence > 1e-5, "a sparse mask should change the logits"
    assert divergence < 0.3 and top1 > 0.75, (divergence, top1)


def test_mask_not_dropped(smollm2, window_1k, reference_logits):
    """A non-causal run of the same operator differs a lot: the integration's output is causal."""
    model, _ = smollm2
    ids = window_1k[:, :256]
    with torch.no_grad(), patch_model(model, exact_operator()):
        causal = model(ids).logits
    torch.testing.assert_close(causal, reference_logits[:, :256], atol=2e-3, rtol=1e-3)

    class NonCausal:
        def __call__(self, q, k, v, *, layer, scale=None, return_plan=False):
            from sampleattn.attention import dense_attention

            out = dense_attention(q, k, v, causal=False, scale=scale)
            return (out, None) if return_plan else out

    with torch.no_grad(), patch_model(model, NonCausal()):
        leaky = model(ids).logits
    assert kl(causal, leaky) > 0.1
    # and a prefix's logits do not depend on what follows it (causality end to end)
    with torch.no_grad(), patch_model(model, sparse_operator(0.95)):
        full = model(ids).logits
        prefix = model(ids[:, :200]).logits
    assert not torch.allclose(full, leaky)
    # sparse plans differ between the two lengths; the first rows are inside the window: exact
    torch.testing.assert_close(full[:, :16], prefix[:, :16], atol=2e-3, rtol=1e-3)


def test_chunked_prefill_equals_one_shot(smollm2, window_1k, reference_logits):
    model, _ = smollm2
    ids = window_1k
    with torch.no_grad(), patch_model(model, exact_operator(), record=True) as handle:
        first = model(ids[:, :600], use_cache=True)
        second = model(ids[:, 600:], cache=first.past_key_values)
    chunks = [(r.seqlen_q, r.seqlen_k) for r in handle.records]
    assert (424, 1024) in chunks and all(r.path == "sparse" for r in handle.records)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), reference_logits,
                               atol=2e-3, rtol=1e-3)


def test_generate_decodes_dense(smollm2, window_1k):
    model, _ = smollm2
    prompt = window_1k[:, :300]
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=4, do_sample=False)
        with patch_model(model, exact_operator(), record=True) as handle:
            got = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, expected)
    paths = {r.path for r in handle.records}
    assert paths == {"sparse", "dense-decode"}
    assert all(r.seqlen_q == 1 for r in handle.records if r.path == "dense-decode")


def test_padded_batch_falls_back_to_dense(smollm2, window_1k):
    model, _ = smollm2
    ids = window_1k[:, :64].repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, :8] = 0  # left padding in the second row
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        with patch_model(model, sparse_operator(0.8), record=True) as handle, warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            got = model(ids, attention_mask=mask).logits
    assert {r.path for r in handle.records} == {"dense-mask"}
    torch.testing.assert_close(got[:, 8:], expected[:, 8:], atol=2e-3, rtol=1e-3)


def test_plain_call_and_unpatch(smollm2):
    model, _ = smollm2
    handle = patch_model(model, exact_operator())
    assert model.config._attn_implementation == IMPLEMENTATION
    handle.unpatch()
    handle.unpatch()  # idempotent
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="callable"):
        patch_model(model, object())


def test_registered_name_builds_a_model(smollm2, window_1k, reference_logits):
    """``attn_implementation="sample_attention"`` is accepted at construction."""
    from transformers import AutoModelForCausalLM

    model, _ = smollm2
    from sampleattn.integrations.transformers import set_default_operator

    register(exact_operator())
    # A copy of the config: from_config keeps the object it is given, and the session's model
    # (shared with the other test folders) must stay on sdpa.
    other = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), attn_implementation=IMPLEMENTATION)
    other.load_state_dict(model.state_dict())
    other.eval()
    assert other.config._attn_implementation == IMPLEMENTATION
    with torch.no_grad():
        logits = other(window_1k[:, :256]).logits
    torch.testing.assert_close(logits, reference_logits[:, :256], atol=2e-3, rtol=1e-3)
    with attention_implementation(other, "sdpa"):
        assert other.config._attn_implementation == "sdpa"
    assert other.config._attn_implementation == IMPLEMENTATION
    assert model.config._attn_implementation == "sdpa"
    set_default_operator(None)
