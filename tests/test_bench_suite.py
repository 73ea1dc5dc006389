"""The GPU benchmark suite's dry run on the CPU (kernels under TRITON_INTERPRET=1), and the layout
of real SmolLM2 heads in the Llama-3-8B geometry that the suite's realistic inputs use."""

from __future__ import annotations

import json
import math

import torch

from sampleattn.bench import harness, suite


def test_suite_dry_run_writes_rows_and_targets(tmp_path):
    code = suite.main(["--dry-run", "--no-real", "--parts", "synth128k", "--dry-length", "128",
                       "--error-rows", "16", "--out", str(tmp_path), "--strict"])
    assert code == 0
    report = json.loads((tmp_path / "suite.json").read_text())
    cases = [r for r in report["rows"] if r.get("part") == "synth128k"]
    assert len(cases) == 1 and cases[0]["check_ok"] and math.isfinite(cases[0]["error"])
    assert cases[0]["cudnn_ms"] > 0 and "substitute" in cases[0]  # CPU stand-in, said so
    assert any(t["target"].startswith("128K synthetic") for t in report["targets"])
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(report["rows"])


def test_smollm2_heads_in_llama_geometry_keep_their_logits():
    torch.manual_seed(0)
    src, dst = harness.SMOLLM2, harness.GEOMETRIES["llama3"]
    layers = harness.smollm2_layers_for(dst, 14)
    assert layers == [14, 15, 16]
    assert harness.smollm2_layers_for(dst, 29) == [27, 28, 29]
    seqlen = 40
    captured = {layer: {"q": torch.randn(1, seqlen, src.nheads_q, src.head_dim),
                        "k": torch.randn(1, seqlen, src.nheads_kv, src.head_dim),
                        "v": torch.randn(1, seqlen, src.nheads_kv, src.head_dim)} for layer in layers}
    q, k, v = harness.smollm2_to_geometry(captured, layers, dst, dtype=torch.float32)
    assert q.shape == (1, seqlen, 32, 128) and k.shape == v.shape == (1, seqlen, 8, 128)
    for g in range(8):
        layer, h = layers[g // 3], g % 3
        for j in range(4):
            real = captured[layer]["q"][0, :, 3 * h + j % 3] @ captured[layer]["k"][0, :, h].T / 8
            mapped = q[0, :, 4 * g + j] @ k[0, :, g].T / math.sqrt(128)
            torch.testing.assert_close(mapped, real, atol=1e-4, rtol=1e-4)
    assert (k != 0).float().mean() > 0.99  # turned: no zero-padded coordinates left
