"""The GPU benchmark suite: its case table, its targets, and its dry run on the CPU (kernels under
TRITON_INTERPRET=1), plus the layout of real SmolLM2 heads in the Llama-3-8B geometry that the
suite's realistic inputs use."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from sampleattn import SampleAttentionConfig
from sampleattn.bench import harness, suite
from sampleattn.bench.suite_cases import (GPU_SIZES, PART_ORDER, Case, Dense, Target, dry_sizes, length_word,
                                          suite_parts)
from sampleattn.bench.suite_targets import SUMMARIES, case_targets, suite_targets

STAND_IN_PARTS = ("synth128k", "synth1m", "flex128k", "alphas128k", "grid128k", "chatglm2", "batch4", "mid512k")


def test_the_table_has_every_part_in_order_with_explicit_cases():
    parts = suite_parts(GPU_SIZES)
    assert tuple(parts) == PART_ORDER
    assert suite.build_parser().parse_args([]).parts == ",".join(PART_ORDER)
    cases = [e for p in parts.values() for e in p.entries if isinstance(e, Case)]
    assert all(c.part in parts and c.estimate_s > 0 for c in cases)
    assert {p.summary for p in parts.values() if p.summary} <= set(SUMMARIES)
    # the paper's 128K setting on real heads of both bands, each with its speed targets
    main = [c for c in parts["main128k"].entries]
    assert [(c.seqlen, c.inputs, c.band, c.alpha, c.window, c.sample) for c in main] == [
        (131072, "real", "mid", 0.95, 0.08, 0.05), (131072, "real", "late", 0.95, 0.08, 0.05)]
    assert {t.field for t in main[0].targets} == {"speedup_vs_cudnn", "speedup_vs_flash", "plan_share",
                                                  "extra_memory_vs_inputs"}
    assert [c.seqlen for c in parts["breakeven"].entries] == [n for n in GPU_SIZES.breakeven for _ in range(2)]
    one_m = parts["1m"].entries
    assert [type(e) for e in one_m] == [Dense, Dense, Case, Case, Case]
    assert all(c.seqlen == 1 << 20 and c.reference == "extrapolated" for c in one_m[2:])
    assert parts["dense1m"].entries[0].fills == "1m"
    assert len(parts["grid128k"].entries) == 9 and parts["grid128k"].choose
    assert {c.geometry for c in parts["chatglm2"].entries} == {"chatglm2"}
    assert {(c.seqlen, c.batch) for c in parts["batch4"].entries} == {(32768, 4)}
    assert [c.seqlen for c in parts["mid512k"].entries] == [262144, 262144, 524288, 524288]
    # the alpha-0.99 choice is measured on the late band after the candidates, the late
    # reference only where the choice is another point
    follow = [c for c in parts["alpha099"].entries if c.chosen_from]
    assert [(c.band, c.window, c.unless_chosen) for c in follow] == [("late", None, False), ("late", 0.08, True)]


def test_every_case_of_the_table_is_a_valid_config_and_has_its_own_label():
    for sizes in (GPU_SIZES, dry_sizes(64)):
        labels = set()
        for part in suite_parts(sizes).values():
            for case in part.entries:
                if not isinstance(case, Case):
                    continue
                window, sample = case.window or 0.08, case.sample or 0.05
                SampleAttentionConfig(alpha=case.alpha, window_ratio=window, sample_ratio=sample, dense_below=0,
                                      **dict(case.options))
                word = "synthetic" if case.inputs == "synthetic" else f"real-{case.band}"
                label = (case.part, case.label(word, window, sample))
                assert label not in labels or sizes is not GPU_SIZES, label
                labels.add(label)


def test_a_dry_run_walks_the_gpu_cases_at_tiny_lengths():
    gpu, dry = suite_parts(GPU_SIZES), suite_parts(dry_sizes(64))
    for name in PART_ORDER:
        g = [(type(e).__name__, getattr(e, "inputs", ""), getattr(e, "band", "")) for e in gpu[name].entries]
        d = [(type(e).__name__, getattr(e, "inputs", ""), getattr(e, "band", "")) for e in dry[name].entries]
        if name == "grid128k":  # every 4th point of the grid
            assert d == g[::4]
        elif name == "breakeven":  # two lengths instead of five
            assert d == g[:4]
        else:
            assert d == g, name
        assert all(e.seqlen <= 64 for e in dry[name].entries)
    assert length_word(131072) == "128k" and length_word(1 << 20) == "1m" and length_word(96) == "96"


def _row(**fields):
    base = {"part": "main128k", "label": "128k real-mid a0.95 w8% s5%", "inputs": "smollm2-layer14", "seqlen": 131072,
            "alpha": 0.95, "window_ratio": 0.08, "sample_ratio": 0.05, "error": 0.1, "density": 0.2, "plan_ms": 10.0,
            "total_ms": 50.0, "first_call_s": 1.0, "geometry": "llama3", "batch": 1, "band": "mid"}
    return {**base, **fields}


def test_case_targets_read_the_row_of_their_case():
    case = suite_parts(GPU_SIZES)["main128k"].entries[0]
    lines = {t["target"]: t for t in case_targets(case, _row(speedup_vs_cudnn=3.0, speedup_vs_flash=3.5,
                                                             plan_share=0.2, extra_memory_vs_inputs=None))}
    assert lines["128K real-mid a0.95 >= 2.5x cuDNN"]["met"] is True
    assert lines["128K real-mid a0.95 >= 2.5x cuDNN"]["value"] == "3x, error 0.1000"
    assert lines["128K real-mid a0.95 >= 4x flash"]["met"] is False
    assert lines["128K real-mid a0.95 plan <= 15% of operator"]["met"] is False
    assert lines["128K real-mid a0.95 plan <= 15% of operator"]["value"] == "20%"
    assert not any("memory" in name for name in lines)  # not measured (the CPU): no line
    glm = Case("chatglm2", 131072, "real", 0.95, 0.08, 0.05, targets=(Target("{word} x", "speedup_vs_cudnn", 1.0),))
    line, = case_targets(glm, _row(label="128k synthetic(for mid) a0.95 w8% s5%", speedup_vs_cudnn=None))
    assert line["target"] == "synthetic(for mid) x" and line["met"] is None


def test_part_summaries_read_several_rows():
    rows = [_row(part="breakeven", label=f"{length_word(n)} real-mid a0.95 w8% s5%", seqlen=n, speedup_vs_cudnn=x,
                 kernels_compiled=0 if n != 16384 else 3)
            for n, x in ((4096, 0.7), (8192, 1.1), (16384, 0.9), (32768, 1.3), (65536, 2.0))]
    one_m = [_row(part="1m", seqlen=1 << 20, window_ratio=0.01, sample_ratio=0.01, speedup_vs_cudnn=12.0,
                  cudnn_extrapolated=True, speedup_vs_cudnn_measured=9.0, error=0.2)]
    pairs = [(Case(r["part"], r["seqlen"], "real", 0.95, 0.08, 0.05), r) for r in rows + one_m]
    lines = {t["target"].split(" (")[0]: t for t in suite_targets(pairs, {"breakeven": "breakeven", "1m": "1m"},
                                                                   "llama3")}
    assert lines["break-even vs cuDNN"]["value"] == "32768 tokens"  # from where it stays >= 1
    assert lines["1M a0.95 >= 10x cuDNN"]["value"].startswith("9x") and lines["1M a0.95 >= 10x cuDNN"]["met"] is False
    assert "measured cuDNN" in lines["1M a0.95 >= 10x cuDNN"]["note"]
    recompile = lines["no recompilation per new length"]
    assert recompile["met"] is False and "16384: 3 compiled" in recompile["value"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Every part that runs on synthetic inputs (``--no-real``) at 64 tokens, in one process."""
    out = tmp_path_factory.mktemp("suite")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = suite.main(["--dry-run", "--no-real", "--dry-length", "64", "--error-rows", "8", "--out", str(out),
                           "--strict"])
    return code, json.loads((out / "suite.json").read_text()), out, err.getvalue()


def test_dry_run_measures_every_stand_in_case(dry_run):
    code, report, out, err = dry_run
    assert code == 0 and not report["errors"] and not report["skipped"]
    assert "suite parts" in err and f"{len(STAND_IN_PARTS)}/{len(STAND_IN_PARTS)}" in err  # the progress bar
    cases = [r for r in report["rows"] if "total_ms" in r]
    assert all(r["check_ok"] and math.isfinite(r["error"]) and r["cudnn_ms"] > 0 for r in cases)
    assert all("substitute" in r for r in cases)  # the CPU stand-in for cuDNN, said so
    count = {p: sum(r["part"] == p for r in cases) for p in STAND_IN_PARTS}
    assert count == {"synth128k": 1, "synth1m": 1, "flex128k": 1, "alphas128k": 2, "grid128k": 3, "chatglm2": 1,
                     "batch4": 1, "mid512k": 4}
    glm = next(r for r in cases if r["part"] == "chatglm2")
    assert glm["geometry"] == "chatglm2" and glm["label"] == "64 synthetic(for mid) chatglm2 geometry a0.95 w8% s5%"
    b4 = next(r for r in cases if r["part"] == "batch4")
    assert b4["batch"] == 4 and b4["seqlen"] == 32
    assert sorted(r["seqlen"] for r in cases if r["part"] == "mid512k") == [32, 32, 64, 64]
    flex = next(r for r in cases if r["part"] == "flex128k")
    assert flex["flex_ms"] is None  # FlexAttention is timed on a GPU only
    dense = [r for r in report["rows"] if r["part"] == "dense"]
    # one dense timing per (length, geometry, batch), reused by every case there; flex128k times
    # its length again with FlexAttention beside cuDNN and flash
    assert len({(r["seqlen"], r["geometry"], r["batch"]) for r in dense}) == 4
    assert [("flex" in r) for r in dense].count(True) == 1 and len(dense) == 5
    assert any(r.get("flex_error") for r in dense)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(report["rows"])


def test_dry_run_chooses_and_writes_its_targets(dry_run):
    _, report, _, _ = dry_run
    grid = [r for r in report["rows"] if r["part"] == "grid128k"]
    chosen = [r for r in grid if r.get("choice")]
    assert len(chosen) == 1
    assert chosen[0]["error"] <= grid[0]["error"] and chosen[0]["total_ms"] == min(
        r["total_ms"] for r in grid if r["error"] <= grid[0]["error"])
    assert any(n.startswith("grid128k: fastest") for n in report["notes"])
    targets = {t["target"]: t for t in report["targets"]}
    names = " / ".join(targets)
    for name in ("128K synthetic a0.95", "vs FlexAttention", "speed-up by alpha", "window x sample grid",
                 "ChatGLM2 geometry synthetic(for mid) a0.95 >= 2.5x cuDNN", "batch 4", "speed-up vs cuDNN by length",
                 "first-call (compile) time"):
        assert name in names, name
    glm = targets["128K ChatGLM2 geometry synthetic(for mid) a0.95 >= 2.5x cuDNN"]
    assert glm["met"] is False  # the interpreter is slower than SDPA: the verdict is computed, not assumed


def test_inputs_are_freed_between_lengths(tmp_path):
    """The suite's 128K inputs stay while the cases are no longer; anything else goes when a case
    of another length, geometry or batch comes, and inputs longer than 128K one kind at a time."""
    args = suite.build_parser().parse_args(["--dry-run", "--no-real", "--dry-length", "64", "--out", str(tmp_path)])
    run = suite.SuiteRun(args)
    glm = harness.GEOMETRIES["chatglm2"]
    run.synthetic(64, run.geometry, 1)
    run.synthetic(64, glm, 1)
    run.inputs[("mid", 32, "smollm2", 1)] = (torch.zeros(1),) * 3
    run.make_room("synthetic", 32, "smollm2", 4)
    assert list(run.inputs) == [("synthetic", 64, "smollm2", 1)]
    run.sizes = dry_sizes(32)  # now 64 tokens is longer than the suite's long length
    run.inputs[("mid", 64, "smollm2", 1)] = (torch.zeros(1),) * 3
    run.make_room("synthetic", 64, "smollm2", 1)
    assert list(run.inputs) == [("synthetic", 64, "smollm2", 1)]


def test_unknown_parts_and_missing_gpu_are_refused(capsys):
    assert suite.main(["--parts", "main128k,nope", "--out", "/tmp/unused"]) == 2
    assert "unknown parts ['nope']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert suite.main(["--parts", "main128k", "--out", "/tmp/unused"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_smollm2_heads_in_llama_geometry_keep_their_logits():
    torch.manual_seed(0)
    src, dst = harness.SMOLLM2, harness.GEOMETRIES["llama3"]
    layers = harness.smollm2_layers_for(dst, 14)
    assert layers == [14, 15, 16]
    assert harness.smollm2_layers_for(dst, 29) == [27, 28, 29]
    seqlen = 40
    captured = {layer: {"q": torch.randn(1, seqlen, src.num_q_heads, src.head_dim),
                        "k": torch.randn(1, seqlen, src.num_kv_heads, src.head_dim),
                        "v": torch.randn(1, seqlen, src.num_kv_heads, src.head_dim)} for layer in layers}
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
    None, which counts as no variant compiled yet."""
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


def test_bench_geometries_are_the_catalogue_models():
    """The benchmarks name their geometries (rows, ``--geometry``) but hold the one `Geometry`
    type, the model catalogue's; a q/k shape gets its name back, or "Hq/Hkv/dD" outside the table."""
    from sampleattn import Geometry
    from sampleattn.models.catalog import CATALOG

    assert harness.GEOMETRIES == {"llama3": CATALOG["llama3"].geometry, "chatglm2": CATALOG["chatglm2"].geometry,
                                  "smollm2": CATALOG["smollm2-135m"].geometry}
    assert all(isinstance(g, Geometry) for g in harness.GEOMETRIES.values())
    assert harness.GEOMETRIES["chatglm2"].heads == (32, 2, 128)
    assert [harness.geometry_name(g.heads) for g in harness.GEOMETRIES.values()] == list(harness.GEOMETRIES)
    assert harness.geometry_name((4, 2, 64)) == "4/2/d64"
    assert harness.smollm2_layers_for(Geometry(1, 9, 3, 64), 5) == [5]  # SmolLM2's heads, whatever the depth
