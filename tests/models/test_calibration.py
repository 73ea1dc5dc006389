"""Calibration text, token windows, the on-disk cache of captures, synthetic calibration."""

from __future__ import annotations

import json
import time

import pytest
import torch
from sampleattn.geometry import Geometry
from sampleattn.models.calibration import CalibrationCache, default_cache_root, logit_positions_for
from sampleattn.models.capture import capture_qkv
from sampleattn.models.catalog import get_model_spec
from sampleattn.models.samples import synthetic_calibration
from sampleattn.models.text import (
    calibration_windows,
    essays_text,
    load_calibration_file,
    text_fingerprint,
    window_starts,
)

# -- text ------------------------------------------------------------------------------------


def test_essays(essays):
    assert len(essays) > 500_000
    assert essays == essays_text()  # deterministic order
    assert "startup" in essays


def test_calibration_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("plain text\n")
    assert load_calibration_file(txt) == "plain text\n"
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert load_calibration_file(jsonl) == "one\n\ntwo"
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r'c.jsonl:2: expected an object with a string "text"'):
        load_calibration_file(bad)
    broken = tmp_path / "d.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_calibration_file(broken)
    with pytest.raises(FileNotFoundError):
        load_calibration_file(tmp_path / "missing.txt")
    empty = tmp_path / "e.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="no text"):
        load_calibration_file(empty)


def test_fingerprint():
    assert text_fingerprint("abc") == text_fingerprint("abc")
    assert text_fingerprint("abc") != text_fingerprint("abd")
    assert len(text_fingerprint("abc")) == 16


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMPLEATTN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "sampleattn" / "calibration"
    monkeypatch.setenv("SAMPLEATTN_CACHE", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine" / "calibration"


# -- windows ---------------------------------------------------------------------------------


def test_window_starts_are_spread_and_prefix_stable():
    starts = window_starts(1000, 8, seed=3)
    assert len(set(starts)) == 8 and all(0 <= s < 1000 for s in starts)
    assert window_starts(1000, 3, seed=3) == starts[:3]
    assert window_starts(1000, 2, seed=3, first=5) == starts[5:7]
    assert window_starts(1000, 8, seed=4) != starts


def test_windows_are_exact_distinct_and_deterministic(smollm2, essays):
    _, tokenizer = smollm2
    windows = calibration_windows(tokenizer, essays, 300, 4, seed=0)
    assert [w.shape for w in windows] == [torch.Size([300])] * 4 and windows[0].dtype == torch.long
    again = calibration_windows(tokenizer, essays, 300, 4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(windows, again, strict=True))
    assert len({tuple(w.tolist()) for w in windows}) == 4
    other_seed = calibration_windows(tokenizer, essays, 300, 1, seed=1)[0]
    assert not torch.equal(other_seed, windows[0])
    assert torch.equal(calibration_windows(tokenizer, essays, 300, 1, seed=0, first=2)[0], windows[2])
    # A window is consecutive text: decoding and re-encoding its middle gives it back.
    middle = tokenizer.decode(windows[1][50:250])
    assert len(middle) > 500


def test_short_text_wraps(smollm2):
    _, tokenizer = smollm2
    text = "A short calibration text about attention."
    n = len(tokenizer(text, add_special_tokens=False).input_ids)
    (window,) = calibration_windows(tokenizer, text, 5 * n, 1)
    assert window.shape == (5 * n,)
    decoded = tokenizer.decode(window)
    assert decoded.count("attention") >= 4


def test_logit_positions():
    assert torch.equal(logit_positions_for(100, 256), torch.arange(100))
    positions = logit_positions_for(4096, 256)
    assert positions.numel() == 256 and positions[0] == 0 and positions[-1] == 4095
    assert bool((positions[1:] > positions[:-1]).all())


# -- cache -----------------------------------------------------------------------------------


class _ForwardCounter:
    """Counts real forward passes of a model with a forward pre-hook."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def close(self):
        self._handle.remove()


def test_cache_captures_once_then_reads(smollm2, essays, cache):
    model, tokenizer = smollm2
    counter = _ForwardCounter(model)
    try:
        first = cache.get_or_capture(model, tokenizer, text=essays, length=128, sample=1, seed=0)
        assert (cache.stats.captures, cache.stats.hits, counter.calls) == (1, 0, 1)
        started = time.perf_counter()
        second = cache.get_or_capture(model, tokenizer, text=essays, length=128, sample=1, seed=0)
        elapsed = time.perf_counter() - started
        assert (cache.stats.captures, cache.stats.hits, counter.calls) == (1, 1, 1)  # no model call
        assert elapsed < 1.0
        # A fresh cache object on the same folder (the next run) reads it too.
        rerun = CalibrationCache(cache.root)
        third = rerun.get_or_capture(model, tokenizer, text=essays, length=128, sample=1, seed=0)
        assert rerun.stats.hits == 1 and counter.calls == 1
    finally:
        counter.close()
    assert first.path == second.path == third.path
    assert first.layers == list(range(30))

    layer = second.layer(3)
    assert (
        layer["q"].shape == (1, 128, 9, 64)
        and layer["k"].shape == (1, 128, 3, 64)
        and layer["v"].shape == (1, 128, 3, 64)
    )
    assert layer["q"].dtype == torch.float16
    window = calibration_windows(tokenizer, essays, 128, 1, seed=0, first=1)[0]
    assert torch.equal(second.input_ids, window)
    direct = capture_qkv(model, window, layers=[3])
    for name in "qkv":
        torch.testing.assert_close(layer[name].float(), direct.qkv[3][name], rtol=2e-3, atol=2e-3)
    assert second.logits.shape == (128, 49152) and second.logits.dtype == torch.float32
    torch.testing.assert_close(second.logits, direct.logits[0, second.logit_positions], rtol=0, atol=1e-4)

    meta = json.loads((second.path / "meta.json").read_text())
    assert meta["calibration"] == "captured"
    assert meta["key"]["text"] == text_fingerprint(essays) and meta["key"]["length"] == 128
    assert meta["model_load"]["source_kind"] == "package" and meta["model_load"]["rope_scaling"] is None
    assert meta["store_dtype"] == "float16" and meta["shapes"]["q"] == [1, 128, 9, 64]
    assert not list(second.path.parent.glob(".tmp-*"))  # no leftovers
    assert not list(second.path.glob("*.pt")) and not list(second.path.glob("*.pkl"))  # never pickle


def test_cache_keys_separate_text_length_and_sample(smollm2, essays, cache):
    model, tokenizer = smollm2
    base = cache.get_or_capture(model, tokenizer, text=essays, length=64, sample=0)
    other_text = cache.get_or_capture(model, tokenizer, text=essays[:20_000], length=64, sample=0)
    other_sample = cache.get_or_capture(model, tokenizer, text=essays, length=64, sample=1)
    other_length = cache.get_or_capture(model, tokenizer, text=essays, length=96, sample=0)
    paths = {s.path for s in (base, other_text, other_sample, other_length)}
    assert len(paths) == 4 and cache.stats.captures == 4
    assert base.key.text != other_text.key.text
    assert len(cache.entries("smollm2-135m")) == 4
    samples = cache.get_or_capture_many(model, tokenizer, text=essays, length=64, samples=2)
    assert [s.path for s in samples] == [base.path, other_sample.path] and cache.stats.hits == 2
    assert cache.clear() == 4 and cache.entries() == []


# -- synthetic -------------------------------------------------------------------------------


def test_synthetic_calibration():
    samples = synthetic_calibration("smollm2-135m", 256, 2, seed=5, density=0.05)
    assert len(samples) == 2 and all(s.synthetic for s in samples)
    assert samples[0].meta["calibration"] == "synthetic" and samples[0].meta["generator_kwargs"] == {
        "density": 0.05
    }
    assert samples[0].layers == list(range(30))
    layer = samples[0].layer(4)
    assert (
        layer["q"].shape == (1, 256, 9, 64)
        and layer["k"].shape == (1, 256, 3, 64)
        and layer["v"].shape == (1, 256, 3, 64)
    )
    again = synthetic_calibration(get_model_spec("smollm2-135m"), 256, 2, seed=5, density=0.05)[0].layer(4)
    assert all(torch.equal(layer[n], again[n]) for n in "qkv")
    assert not torch.equal(samples[0].layer(5)["k"], layer["k"])  # layers differ
    assert not torch.equal(samples[1].layer(4)["k"], layer["k"])  # samples differ
    assert samples[0].logits is None and samples[0].input_ids is None

    by_tuple = synthetic_calibration((2, 8, 2, 32), 64, 1)[0]
    assert by_tuple.geometry == Geometry(2, 8, 2, 32)
    assert by_tuple.layer(1, dtype=torch.float16)["q"].dtype == torch.float16
    with pytest.raises(ValueError, match="geometry"):
        synthetic_calibration((2, 8, 2), 64, 1)


def test_capture_progress_bars(smollm2, essays, cache, capsys):
    """With ``progress``, a bar over the samples and one over the layers of each capture (stderr;
    tqdm writes sparingly when it is not a terminal); without it, nothing."""
    model, tokenizer = smollm2
    cache.get_or_capture_many(model, tokenizer, text=essays, length=64, samples=2, seed=7)
    assert capsys.readouterr().err == ""
    cache.get_or_capture_many(model, tokenizer, text=essays, length=64, samples=2, seed=8, progress=True)
    err = capsys.readouterr().err
    layers = model.config.num_hidden_layers
    assert "calibration 64: 100%" in err and "2/2" in err
    assert "capture 64 sample 0" in err and f"/{layers}" in err and "layer" in err
