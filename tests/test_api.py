"""Public API: validation messages, dense fallback, backends, the operator object, the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import sampleattn
from sampleattn import (
    HeadOverride, LayerOverride, ModelAttentionProfile, SampleAttention, SampleAttentionConfig,
    Geometry, dense_attention, parse_length, sample_attention,
)
from sampleattn.reference import attention_ref, sample_attention_ref

from kernel_helpers import qkv, rel_err

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda q, k, v: (q[0], k, v), "expected 4"),
        (lambda q, k, v: (q, k[:, :, :1].expand(-1, -1, 3, -1)[:, :, :3], v), "not a multiple"),
        (lambda q, k, v: (q, k, v[:, :10]), "v has shape"),
        (lambda q, k, v: (q.half(), k, v), "cast them to one dtype"),
        (lambda q, k, v: (q[:, :0], k, v), "empty input"),
        (lambda q, k, v: (torch.cat([q, q], 1), k, v), "seqlen_q=64 > seqlen_k=32"),
        (lambda q, k, v: (q[..., :48].contiguous(), k[..., :48].contiguous(), v[..., :48].contiguous()),
         "head dim 48 is not supported"),
        (lambda q, k, v: (q, k.to("meta"), v.to("meta")), "move them to one device"),
        (lambda q, k, v: (q.int(), k.int(), v.int()), "not supported; use float16"),
        (lambda q, k, v: (q, k[:1].expand(2, -1, -1, -1).contiguous(), v), "batch"),
    ],
    ids=["rank", "gqa", "v-shape", "dtype-mix", "empty", "sq>sk", "headdim", "device-mix", "int", "batch"],
)
def test_bad_input_says_what_to_fix(make, message):
    q, k, v = qkv(1, 32, 32, 4, 2, 64, torch.float32)
    with pytest.raises(ValueError, match=re.escape(message) if "=" in message else message):
        sample_attention(*make(q, k, v), SampleAttentionConfig(dense_below=0))


def test_non_causal_is_refused_with_a_reason():
    q, k, v = qkv(1, 32, 32, 2, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="causal=False is not supported"):
        sample_attention(q, k, v, SampleAttentionConfig(dense_below=0), causal=False)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"alpha": 0}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"window_ratio": -0.1}, "window_ratio"),
     ({"sample_ratio": 0}, "sample_ratio"), ({"block_m": 48}, "power of two"),
     ({"segment_rows": 100}, "multiple of block_m"), ({"gqa_granularity": "group"}, "gqa_granularity"),
     ({"dense_below": -1}, "dense_below"), ({"alhpa": 0.9}, "alhpa")],
)
def test_config_out_of_range_is_refused(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        SampleAttentionConfig(**kwargs)
    assert issubclass(ValidationError, ValueError)


def test_config_is_frozen_and_rounds_window_up():
    config = SampleAttentionConfig(window_ratio=0.08)
    with pytest.raises(ValidationError):
        config.alpha = 0.5
    assert config.window_size(100) == 8 and config.window_size(101) == 9
    assert config.sampled_rows(1000) == 50


@pytest.mark.parametrize("text, tokens", [("32k", 32768), ("96K", 98304), ("1m", 1048576),
                                          ("32768", 32768), ("0.5k", 512), (4096, 4096)])
def test_one_length_parser(text, tokens):
    assert parse_length(text) == tokens


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "1.3k", "32kb"])
def test_bad_lengths_are_refused(text):
    with pytest.raises(ValueError, match="length|whole"):
        parse_length(text)


@pytest.mark.parametrize("seqlen_q,seqlen_k", [(40, 40), (17, 90)])
def test_dense_fallback_below_threshold(seqlen_q, seqlen_k):
    q, k, v = qkv(1, seqlen_q, seqlen_k, 4, 2, 64, torch.float32)
    config = SampleAttentionConfig(alpha=0.5, window_ratio=0.01, dense_below=1000)
    out, p = sample_attention(q, k, v, config, return_plan=True)
    assert p is None
    assert rel_err(out, attention_ref(q, k, v)) < 1e-5
    out2, lse = sample_attention(q, k, v, config, return_lse=True)
    _, lse_ref = attention_ref(q, k, v, return_lse=True)
    assert rel_err(out2, attention_ref(q, k, v)) < 1e-5
    assert torch.allclose(lse, lse_ref, atol=1e-4)
    assert rel_err(dense_attention(q, k, v), attention_ref(q, k, v)) < 1e-5


def test_torch_backend_equals_triton_backend():
    q, k, v = qkv(2, 100, 130, 4, 2, 64, torch.float32, seed=3)
    config = SampleAttentionConfig(alpha=0.9, window_ratio=0.1, sample_ratio=0.2, dense_below=0)
    a = sample_attention(q, k, v, config, backend="triton")
    b = sample_attention(q, k, v, config, backend="torch")
    c = sample_attention_ref(q, k, v, config)
    assert rel_err(a, b) < 1e-4 and rel_err(b, c) < 1e-6


def test_operator_applies_layer_and_head_overrides():
    q, k, v = qkv(1, 128, 128, 4, 2, 64, torch.float32, seed=4)
    profile = ModelAttentionProfile(
        config=SampleAttentionConfig(alpha=0.8, window_ratio=0.05, dense_below=0),
        layers={1: LayerOverride(alpha=1.0, heads={2: HeadOverride(window_ratio=0.5)})},
    )
    attn = SampleAttention(profile, geometry=Geometry(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=64))
    _, p0 = attn(q, k, v, layer=0, return_plan=True)
    _, p1 = attn(q, k, v, layer=1, return_plan=True)
    assert p0.window.tolist() == [7, 7, 7, 7]
    assert p1.window.tolist() == [7, 7, 64, 7]
    assert p1.mean_density == pytest.approx(1.0) and p0.mean_density < 1.0
    with pytest.raises(ValueError, match="out of range"):
        attn(q, k, v, layer=2)
    with pytest.raises(ValueError, match="the model's geometry is"):
        attn(q[:, :, :2], k[:, :, :1], v[:, :, :1], layer=0)
    with pytest.raises(ValueError, match="model has 1 layers"):
        SampleAttention(profile, geometry=Geometry(num_layers=1, num_q_heads=4, num_kv_heads=2, head_dim=64))
    with pytest.raises(ValueError, match="names head 9"):
        sample_attention(q, k, v, SampleAttentionConfig(dense_below=0), heads={9: HeadOverride(alpha=0.5)})


def test_a_call_checks_its_inputs_once_and_a_layer_config_is_made_once(monkeypatch):
    """The operator checks q, k and v at its entry only (the dense path and stage 3 behind it
    do not check again), and builds an overridden layer's config at its first call only."""
    import sampleattn.attention as attention_module

    calls = []
    real = attention_module.check_qkv
    monkeypatch.setattr(attention_module, "check_qkv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = qkv(1, 128, 128, 4, 2, 64, torch.float32, seed=5)
    profile = ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.8, window_ratio=0.05, dense_below=0),
                                    layers={1: LayerOverride(alpha=0.9, heads={2: HeadOverride(window_ratio=0.5)})})
    attn = SampleAttention(profile, backend="torch")
    out = attn(q, k, v, layer=1)
    assert len(calls) == 1  # sparse path: the entry's check, none in stage 3
    assert attn.config_for(1) is attn.config_for(1) and attn.config_for(1).alpha == 0.9
    expected = sample_attention_ref(q, k, v, profile.layer_config(1), heads=profile.head_overrides(1))
    assert torch.equal(out, expected)
    calls.clear()
    dense = SampleAttention(SampleAttentionConfig(dense_below=1 << 20), backend="torch")(q, k, v)
    assert len(calls) == 1 and rel_err(dense, attention_ref(q, k, v)) < 1e-5  # dense path: one check too


def test_import_stays_light():
    code = ("import sys, sampleattn, sampleattn.config, sampleattn.store, sampleattn.tuner; "
            "heavy = [m for m in ('ray', 'optuna', 'sqlalchemy', 'transformers', 'triton') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
    assert "plan" in dir(sampleattn) and sampleattn.__version__


def test_docs_example_runs():
    text = (ROOT / "docs" / "operator.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/operator.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "docs/operator.md", "exec"), namespace)
    assert 0 < namespace["p"].mean_density < 1


def test_from_profile_loads_a_stored_profile(tmp_path):
    """A profile saved in a real SQLite store comes back as a configured operator."""
    from sampleattn.store import ModelInfo, ProfileStore

    url = f"sqlite:///{tmp_path / 'profiles.sqlite'}"
    profile = ModelAttentionProfile(
        config=SampleAttentionConfig(alpha=0.9, window_ratio=0.05, dense_below=0),
        layers={1: LayerOverride(alpha=0.99, heads={0: HeadOverride(window_ratio=0.2)})},
    )
    with ProfileStore(url) as store:
        store.register_model(ModelInfo(name="tiny", num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=64))
        store.save_profile("tiny", "1k", profile, calibration_kind="real")
        store.save_profile("tiny", "4k", SampleAttentionConfig(alpha=0.8), calibration_kind="synthetic")
    attn = SampleAttention.from_profile("tiny", "2k", url)
    assert attn.profile == profile and attn.source.seq_len == 1024
    assert attn.config_for(1).alpha == 0.99
    q, k, v = qkv(1, 128, 128, 4, 2, 64, torch.float32, seed=1)
    _, p = attn(q, k, v, layer=1, return_plan=True)
    assert p.window.tolist() == [26, 7, 7, 7]
    with pytest.raises(ValueError, match="was tuned for"):
        SampleAttention.from_profile("tiny", "1k", url, geometry=Geometry(2, 8, 2, 64))
    # The synthetic profile at 4k is never picked for the real model unless asked.
    assert SampleAttention.from_profile("tiny", "4k", url).source.calibration_kind == "real"
    # Even with allow_synthetic, a real profile wins where the model has one (docs/store.md).
    assert SampleAttention.from_profile("tiny", "4k", url, allow_synthetic=True).config_for(0).alpha == 0.9


def test_from_profile_reaches_the_store_through_an_entry_point():
    """The core finds the store as a registered profile source (it never imports it); a source
    that no package registers gets an error that says what to do."""
    from importlib.metadata import entry_points

    from sampleattn.profile_source import GROUP, load_tuned_profile

    (store,) = entry_points(group=GROUP, name="store")
    assert store.value == "sampleattn.store.profile_source:load_tuned_profile"
    with pytest.raises(LookupError, match="no profile source 'elsewhere' is registered.*reinstall"):
        load_tuned_profile("tiny", "1k", source="elsewhere")


def test_every_package_folder_is_installed():
    """A wheel holds only the packages pyproject lists: every folder with an __init__.py under
    the mapped top-level folders must be listed (a missing one imports from a checkout but not
    from an installed wheel)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for package, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    assert found - listed == set(), f"folders not listed in pyproject's packages: {sorted(found - listed)}"
