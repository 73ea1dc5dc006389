"""The GPU benchmark suite's dry run on the CPU (kernels under TRITON_INTERPRET=1), and the layout
of real SmolLM2 heads in the Llama-3-8B geometry that the suite's realistic inputs use."""

from __future__ import annotations

import json
import math

import torch

from sampleattn.bench import harness, suite


def test_suite_dry_run_writes_rows_and_targets(tmp_path, capsys):
    code = suite.main(["--dry-run", "--no-real", "--parts", "synth128k", "--dry-length", "128",
                       "--error-rows", "16", "--out", str(tmp_path), "--strict"])
    assert code == 0
    err = capsys.readouterr().err
    assert "suite parts" in err and "1/1" in err  # the progress bar over the parts, on stderr
    report = json.loads((tmp_path / "suite.json").read_text())
    cases = [r for r in report["rows"] if r.get("part") == "synth128k"]
    assert len(cases) == 1 and cases[0]["check_ok"] and math.isfinite(cases[0]["error"])
    assert cases[0]["cudnn_ms"] > 0 and "substitute" in cases[0]  # CPU stand-in, said so
    assert any(t["target"].startswith("128K synthetic") for t in report["targets"])
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(report["rows"])


def test_suite_added_parts_dry_run(tmp_path):
    """The parts added after the first GPU run, alone (``--parts``), on synthetic stand-ins at the
    smallest sizes: every part writes its rows and its targets-table line, nothing is left held."""
    added = ",".join(suite.ADDED_PARTS)
    assert suite.PARTS[: len(suite.FIRST_PARTS)] == suite.FIRST_PARTS  # the first run's order, then these
    assert suite.build_parser().parse_args([]).parts == ",".join(suite.FIRST_PARTS + suite.ADDED_PARTS)
    code = suite.main(["--dry-run", "--no-real", "--parts", added, "--dry-length", "64", "--error-rows", "8",
                       "--out", str(tmp_path), "--strict"])
    assert code == 0
    report = json.loads((tmp_path / "suite.json").read_text())
    assert not report["errors"] and not report["skipped"]
    cases = [r for r in report["rows"] if "total_ms" in r]
    assert all(r["check_ok"] and math.isfinite(r["error"]) for r in cases)
    count = {p: sum(r["part"] == p for r in cases) for p in suite.ADDED_PARTS}
    assert count == {"flex128k": 1, "alphas128k": 2, "grid128k": 3, "chatglm2": 1, "batch4": 1, "mid512k": 4}
    glm = next(r for r in cases if r["part"] == "chatglm2")
    assert glm["geometry"] == "chatglm2" and glm["cudnn_ms"] > 0
    b4 = next(r for r in cases if r["part"] == "batch4")
    assert b4["batch"] == 4 and b4["seqlen"] == 32 and b4["cudnn_ms"] > 0
    assert sorted(r["seqlen"] for r in cases if r["part"] == "mid512k") == [32, 32, 64, 64]
    flex = next(r for r in cases if r["part"] == "flex128k")
    assert "flex_ms" in flex and flex["flex_ms"] is None  # FlexAttention is timed on a GPU only
    dense = [r for r in report["rows"] if r["part"] == "dense"]
    assert any(r.get("flex_error") for r in dense)
    assert any(r["geometry"] == "chatglm2" for r in dense) and any(r["batch"] == 4 for r in dense)  # their own
    targets = " / ".join(t["target"] for t in report["targets"])
    for name in ("vs FlexAttention", "speed-up by alpha", "window x sample grid", "ChatGLM2 geometry", "batch 4",
                 "speed-up vs cuDNN by length"):
        assert name in targets, name


def test_suite_added_parts_free_their_inputs(tmp_path):
    """Between the added parts no input longer than 128K (here: the dry length) survives, and the
    parts that capture inputs of their own free them."""
    args = suite.build_parser().parse_args(["--dry-run", "--no-real", "--dry-length", "64", "--out", str(tmp_path)])
    s = suite.Suite(args)
    s.synthetic(64)
    s.inputs[("mid", 1 << 20, "smollm2", 1)] = (torch.zeros(1),) * 3  # a 1M-class leftover of `1m`
    s.drop_above(s.sizes.long)
    assert list(s.inputs) == [("synthetic", 64, "smollm2", 1)]
    s.synthetic(32, harness.GEOMETRIES["chatglm2"])
    s.synthetic(32, batch=4)
    s.drop_where(geometry="chatglm2")
    s.drop_where(batch=4)
    assert list(s.inputs) == [("synthetic", 64, "smollm2", 1)]


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


def test_error_rows_are_the_same_for_every_case_of_a_length():
    """Two configurations compared at one length (the alpha-0.99 rule) measure their errors on
    the same query rows, run after run; another length gets its own rows."""
    from sampleattn.bench.harness import error_rows_for

    a, b = error_rows_for(4096, 256), error_rows_for(4096, 256)
    assert torch.equal(a, b)
    assert a.dtype == torch.int64 and a.shape == (256,)
    assert a[-1] == 4095 and bool((a[1:] > a[:-1]).all())  # sorted, distinct, last row included
    assert not torch.equal(error_rows_for(8192, 256)[:255], a[:255])


def test_kernels_compiled_counts_the_first_call_of_a_process():
    """Before the first operator call the kernel modules are not imported and the count is
    None; the GPU run of 2026-12-02 crashed on None there (main128k, flex128k, sattn-bench)."""
    assert harness.compiled_between(None, 4) == 4
    assert harness.compiled_between(3, 3) == 0
    assert harness.compiled_between(3, 7) == 4
    assert harness.compiled_between(None, None) is None


def test_case_bar_can_be_turned_off(capsys):
    from sampleattn.bench.progress import case_bar

    bar = case_bar(2, "cases", enabled=False)
    bar.set_postfix_str("one")
    bar.update()
    bar.close()
    assert capsys.readouterr().err == ""
    bar = case_bar(2, "cases")
    bar.update(2)
    bar.close()
    assert "cases" in capsys.readouterr().err
