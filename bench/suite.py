"""Every measurement of the speed issue in one process, cheapest and most important first.

Run on the lent H200 (docs/benchmarks.md, "Targets")::

    python3 -m sampleattn.bench.suite --out OUT --budget-s 500

Parts, in the default order (``--parts`` picks and orders them):

``main128k``   128K, Llama-3-8B geometry (32/8 heads, d128), alpha 0.95, window 8%, sample 5%, on
               real SmolLM2 q/k/v of a middle and a late layer band (`harness.smollm2_to_geometry`),
               against SDPA cuDNN and flash: speed-ups, error, plan share, extra memory, first-call time.
``synth128k``  the same case on the structured synthetic inputs.
``alpha099``   128K real (middle band), alpha 0.99: the reference at window 8% / sample 5%, then a
               grid of smaller windows and sample ratios; the fastest whose error is no worse than
               the reference's is the candidate, then measured on the late band too.
``breakeven``  4K..64K at alpha 0.95 / 8% / 5% on real (middle band) and synthetic inputs against
               cuDNN: the break-even length for ``dense_below``; kernels compiled per new length.
``rescored``   128K real, alpha 0.95, ``selection="rescored"`` (skipped if the config lacks it).
``1m``         cuDNN at 256K and 512K (random inputs: dense timings do not depend on values), then
               the operator at 1M on real inputs (middle band) with windows of 1-2% and sample
               ratios of 1-2%; speed-ups against cuDNN at 1M extrapolated from 512K by the
               quadratic law (and marked so) until ``dense1m`` measures it.
``dense1m``    cuDNN at 1M measured once (no warm-up, one repeat) on the 1M inputs.
``native128k`` 128K real inputs in SmolLM2's own geometry (9/3 heads, d64): a check that the
               Llama-geometry construction does not change the picture.
``synth1m``    the operator at 1M on the synthetic inputs (dense-ish: one timed call).

Before each case the time left is compared with the case's estimate; a case that does not fit is
recorded as skipped. Every finished case is appended to ``OUT/results.jsonl`` and ``OUT/suite.json``
(rows, targets, skipped cases, environment) is rewritten, so a run stopped early keeps what it
measured. A table of the targets is printed last. Exit status 0, or 1 if a case's own check failed.

``--dry-run``: the same parts at tiny sizes on the CPU (kernels under TRITON_INTERPRET=1, wall-clock
times, PyTorch's default SDPA in place of cuDNN/flash), to find crashes before spending GPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

PARTS = ("main128k", "synth128k", "alpha099", "breakeven", "rescored", "1m", "dense1m", "native128k", "synth1m")


@dataclasses.dataclass
class Sizes:
    """The lengths of one run: the GPU's, or tiny ones for a dry run."""

    geometry: str
    long: int  # the 128K cases
    huge: int  # the 1M cases
    extrapolate_from: tuple[int, ...]  # cuDNN timed here, extrapolated to `huge`
    breakeven: tuple[int, ...]
    mid_layer: int
    late_layer: int
    repeat: int
    huge_repeat: int
    scale: float  # multiplies every time estimate (dry runs: tiny)


GPU_SIZES = Sizes("llama3", 131072, 1048576, (262144, 524288), (4096, 8192, 16384, 32768, 65536), 14, 24,
                  repeat=7, huge_repeat=2, scale=1.0)
DRY_SIZES = Sizes("smollm2", 512, 512, (256, 512), (256, 512), 14, 24, repeat=1, huge_repeat=1, scale=0.0)

GRID_099 = [(0.04, 0.02), (0.02, 0.01), (0.04, 0.01), (0.02, 0.02), (0.08, 0.02), (0.08, 0.01), (0.04, 0.05),
            (0.02, 0.05)]
HUGE_CONFIGS = [(0.01, 0.01), (0.02, 0.01), (0.01, 0.02)]


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from sampleattn.bench import harness

        self.torch, self.h = torch, harness
        self.args = args
        self.sizes = DRY_SIZES if args.dry_run else GPU_SIZES
        if args.dry_run and args.dry_length:
            n = args.dry_length
            self.sizes = dataclasses.replace(self.sizes, long=n, huge=n, extrapolate_from=(n // 2, n),
                                             breakeven=(n // 2, n))
        if args.geometry:
            self.sizes = dataclasses.replace(self.sizes, geometry=args.geometry)
        self.geometry = harness.GEOMETRIES[self.sizes.geometry]
        self.device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
        # The Triton interpreter computes bf16 through numpy without bf16: dry runs use fp32.
        self.dtype = torch.float32 if args.dry_run else torch.bfloat16
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.jsonl").write_text("")
        self.started = time.time()
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.errors: list[dict] = []
        self.notes: list[str] = []
        self.inputs: dict[tuple, tuple] = {}  # (kind, seqlen) -> (q, k, v)
        self.baselines: dict[int, dict] = {}  # seqlen -> dense times
        self.alpha099_choice: tuple[float, float] | None = None

    # ---- bookkeeping ------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.started)

    def fits(self, name: str, estimate_s: float) -> bool:
        estimate_s *= self.sizes.scale
        if self.left() >= estimate_s:
            return True
        self.skipped.append({"case": name, "estimate_s": estimate_s, "left_s": round(self.left(), 1)})
        print(f"[suite] skip {name}: needs ~{estimate_s:.0f} s, {self.left():.0f} s left", flush=True)
        self.save()
        return False

    def save(self) -> None:
        from sampleattn import collect_env

        report = {"env": collect_env(), "command": sys.argv, "dry_run": self.args.dry_run,
                  "budget_s": self.args.budget_s, "seconds": time.time() - self.started,
                  "sizes": dataclasses.asdict(self.sizes), "notes": self.notes,
                  "targets": self.targets(), "skipped": self.skipped, "errors": self.errors,
                  "rows": json.loads(self.h.to_json(self.rows))}
        tmp = self.out / "suite.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(self.out / "suite.json")

    def record(self, row: dict) -> dict:
        row["elapsed_s"] = round(time.time() - self.started, 1)
        self.rows.append(row)
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(json.loads(self.h.to_json([row]))[0], default=str) + "\n")
        short = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                 if k in ("part", "label", "inputs", "seqlen", "alpha", "window_ratio", "sample_ratio", "density",
                          "error", "plan_ms", "attention_ms", "total_ms", "cudnn_ms", "speedup_vs_cudnn",
                          "speedup_vs_flash", "first_call_s", "kernels_compiled", "check_ok", "elapsed_s")}
        print(json.dumps(short), flush=True)
        self.save()
        return row

    def guarded(self, name: str, fn) -> None:
        """Run one part; an error (out of memory, a kernel failure) is recorded, not fatal."""
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - the suite must reach its other parts
            self.errors.append({"case": name, "error": f"{type(error).__name__}: {str(error)[:400]}",
                                "traceback": traceback.format_exc()[-2000:]})
            print(f"[suite] {name} failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
            if self.args.dry_run and self.args.strict:
                raise
        finally:
            gc.collect()
            if self.device == "cuda":
                self.torch.cuda.empty_cache()
            self.save()

    # ---- inputs and baselines ----------------------------------------------------------------
    def real(self, seqlen: int, band: str, geometry=None):
        """Real SmolLM2 q/k/v of the middle or late layer band at ``seqlen``, in ``geometry``.
        One prefill captures both bands at a length; the tensors are kept until `drop`."""
        geometry = geometry or self.geometry
        key = (band, seqlen, geometry.name)
        if key not in self.inputs:
            h = self.h
            bands = {"mid": h.smollm2_layers_for(geometry, self.sizes.mid_layer),
                     "late": h.smollm2_layers_for(geometry, self.sizes.late_layer)}
            wanted = [band] if seqlen > self.sizes.long else list(bands)  # at 1M: the band asked for only
            layers = sorted({layer for b in wanted for layer in bands[b]})
            started = time.time()
            captured = h.capture_smollm2(seqlen, layers, device=self.device)
            capture_s = time.time() - started
            for b in wanted:
                self.inputs[(b, seqlen, geometry.name)] = h.smollm2_to_geometry(captured, bands[b], geometry,
                                                                                dtype=self.dtype)
            del captured
            self.notes.append(f"SmolLM2 capture at {seqlen} tokens, layers {layers} (bands {wanted}): "
                              f"{capture_s:.1f} s (includes the first model load), RoPE scaling "
                              f"{h.smollm2_rope_scaling()}")
        return self.inputs[key]

    def synthetic(self, seqlen: int):
        key = ("synthetic", seqlen, self.geometry.name)
        if key not in self.inputs:
            self.inputs[key] = self.h.make_inputs(self.geometry, seqlen, 1, "synthetic", device=self.device,
                                                  dtype=self.dtype)
        return self.inputs[key]

    def drop(self, seqlen: int | None = None) -> None:
        for key in [k for k in self.inputs if seqlen is None or k[1] == seqlen]:
            del self.inputs[key]
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def dense(self, seqlen: int, qkv, *, flash: bool = True, warmup: int = 2, repeat: int | None = None) -> dict:
        """cuDNN (and flash) at ``seqlen``, measured once per length: dense attention's time does
        not depend on the values, so every input kind at that length shares it."""
        if seqlen not in self.baselines:
            q, k, v = qkv
            backends = ("cudnn", "flash") if flash else ("cudnn",)
            times = self.h.dense_baselines(q, k, v, repeat=repeat or self.sizes.repeat, flex=False,
                                           warmup=0 if self.args.dry_run else warmup, backends=backends)
            times["measured_on"] = f"{seqlen} tokens, warmup {warmup}, repeat {repeat or self.sizes.repeat}"
            self.baselines[seqlen] = times
            self.record({"part": "dense", "label": f"dense baselines {seqlen}", "seqlen": seqlen,
                         **{k_: v_ for k_, v_ in times.items()}})
        return self.baselines[seqlen]

    def case(self, part: str, label: str, inputs: str, seqlen: int, qkv, alpha: float, window: float,
             sample: float, *, options: tuple = (), repeat: int | None = None, warmup: int = 2,
             memory: bool = False, baselines: dict | None = None) -> dict:
        h = self.h
        q, k, v = qkv
        case = h.Case(self.geometry.name if q.shape[2] == self.geometry.nheads_q else "smollm2", seqlen, 1, inputs,
                      alpha, window, sample, "kv_head", options=options)
        base = baselines if baselines is not None else self.baselines.get(seqlen, {})
        if self.args.dry_run:  # the interpreter takes seconds per call: one untimed-warm-up run
            repeat, warmup = 1, 0
        row = h.run_case(case, q, k, v, base, error_rows=self.args.error_rows, repeat=repeat or self.sizes.repeat,
                         warmup=warmup, flex_sparse=False)
        if memory:
            row["extra_memory_gib"], row["extra_memory_vs_inputs"] = h.extra_memory_gib(q, k, v, case.config())
        row.update(part=part, label=label)
        if "cudnn_extrapolated" in base:
            row["cudnn_extrapolated"] = base["cudnn_extrapolated"]
        return self.record(row)

    # ---- parts --------------------------------------------------------------------------------
    def part_main128k(self) -> None:
        s = self.sizes
        if not self.fits("main128k capture", 60):
            return
        mid = self.real(s.long, "mid")
        self.dense(s.long, mid)
        for band in ("mid", "late"):
            if self.fits(f"main128k {band}", 25):
                self.case("main128k", f"128k real-{band} a0.95 w8% s5%", self.real_name(band), s.long,
                          self.real(s.long, band), 0.95, 0.08, 0.05, memory=True)

    def real_name(self, band: str) -> str:
        layer = self.sizes.mid_layer if band == "mid" else self.sizes.late_layer
        return f"smollm2-layer{layer}"

    def part_synth128k(self) -> None:
        s = self.sizes
        if not self.fits("synth128k", 25):
            return
        qkv = self.synthetic(s.long)
        self.dense(s.long, qkv)
        self.case("synth128k", "128k synthetic a0.95 w8% s5%", "synthetic", s.long, qkv, 0.95, 0.08, 0.05)
        self.inputs.pop(("synthetic", s.long, self.geometry.name), None)

    def part_alpha099(self) -> None:
        s = self.sizes
        if not self.fits("alpha099 reference", 20):
            return
        qkv = self.real(s.long, "mid")
        self.dense(s.long, qkv)
        ref = self.case("alpha099", "128k real-mid a0.99 w8% s5% (reference)", self.real_name("mid"), s.long, qkv,
                        0.99, 0.08, 0.05, repeat=5, warmup=1)
        candidates = [ref]
        for window, sample in GRID_099:
            if not self.fits(f"alpha099 w{window} s{sample}", 10):
                break
            candidates.append(self.case("alpha099", f"128k real-mid a0.99 w{window:.0%} s{sample:.0%}",
                                        self.real_name("mid"), s.long, qkv, 0.99, window, sample, repeat=5, warmup=1))
        ok = [r for r in candidates if r["error"] <= ref["error"] * (1 + 1e-9)]
        best = min(ok, key=lambda r: r["total_ms"])
        best["alpha099_choice"] = True
        self.alpha099_choice = (best["window_ratio"], best["sample_ratio"])
        self.notes.append(f"alpha 0.99: fastest with error <= reference ({ref['error']:.4f}) is window "
                          f"{best['window_ratio']}, sample {best['sample_ratio']} ({best['total_ms']:.1f} ms, "
                          f"error {best['error']:.4f}); {len(candidates)} of {len(GRID_099) + 1} points measured")
        self.save()
        if self.fits("alpha099 late", 15):
            self.case("alpha099", f"128k real-late a0.99 w{best['window_ratio']:.0%} s{best['sample_ratio']:.0%} "
                      "(choice)", self.real_name("late"), s.long, self.real(s.long, "late"), 0.99,
                      best["window_ratio"], best["sample_ratio"], repeat=5, warmup=1)
            if (best["window_ratio"], best["sample_ratio"]) != (0.08, 0.05):
                self.case("alpha099", "128k real-late a0.99 w8% s5% (reference)", self.real_name("late"), s.long,
                          self.real(s.long, "late"), 0.99, 0.08, 0.05, repeat=5, warmup=1)

    def part_breakeven(self) -> None:
        s = self.sizes
        for seqlen in s.breakeven:
            if not self.fits(f"breakeven {seqlen}", 5 + 10 * (seqlen / 65536) ** 2):
                return
            real = self.real(seqlen, "mid")
            self.dense(seqlen, real)
            self.case("breakeven", f"{seqlen} real-mid a0.95 w8% s5%", self.real_name("mid"), seqlen, real,
                      0.95, 0.08, 0.05)
            self.case("breakeven", f"{seqlen} synthetic a0.95 w8% s5%", "synthetic", seqlen, self.synthetic(seqlen),
                      0.95, 0.08, 0.05)
            self.drop(seqlen)

    def part_rescored(self) -> None:
        from sampleattn import SampleAttentionConfig

        fields = getattr(SampleAttentionConfig, "model_fields", {})
        if "selection" not in fields:
            self.notes.append("rescored: SampleAttentionConfig has no 'selection' field in this version; skipped")
            return
        s = self.sizes
        options = (("selection", "rescored"), ("candidate_alpha", 0.999), ("rescore_stride", 1))
        for band in ("mid", "late"):
            if self.fits(f"rescored {band}", 20):
                qkv = self.real(s.long, band)
                self.dense(s.long, qkv)
                self.case("rescored", f"128k real-{band} a0.95 w8% s5% rescored", self.real_name(band), s.long, qkv,
                          0.95, 0.08, 0.05, options=options)

    def part_1m(self) -> None:
        s, torch = self.sizes, self.torch
        self.drop(s.long)
        g = self.geometry
        for seqlen in s.extrapolate_from:
            if seqlen in self.baselines or not self.fits(f"cuDNN {seqlen}", 5 * (seqlen / 262144) ** 2 + 3):
                continue
            gen = torch.Generator(device=self.device).manual_seed(seqlen)
            q = torch.randn(1, seqlen, g.nheads_q, g.head_dim, generator=gen, device=self.device, dtype=self.dtype)
            kv = torch.randn(2, seqlen, g.nheads_kv, g.head_dim, generator=gen, device=self.device, dtype=self.dtype)
            self.dense(seqlen, (q, kv[:1], kv[1:]), flash=False, warmup=1, repeat=2)
            del q, kv
            self.drop()
        extrapolated = self.extrapolated_cudnn(s.huge)
        if not self.fits("1m capture", 110):
            return
        qkv = self.real(s.huge, "mid")
        base = dict(self.baselines.get(s.huge, {}))
        if "cudnn" not in base and extrapolated is not None:
            base["cudnn"] = extrapolated
            base["cudnn_extrapolated"] = True
        for window, sample in HUGE_CONFIGS:
            if not self.fits(f"1m w{window} s{sample}", 45):
                break
            self.case("1m", f"1m real-mid a0.95 w{window:.0%} s{sample:.0%}", self.real_name("mid"), s.huge, qkv,
                      0.95, window, sample, repeat=s.huge_repeat, warmup=1, memory=(window, sample) == (0.01, 0.01),
                      baselines=base)

    def extrapolated_cudnn(self, seqlen: int) -> float | None:
        measured = [(n, b["cudnn"]) for n, b in self.baselines.items()
                    if n in self.sizes.extrapolate_from and isinstance(b.get("cudnn"), float)]
        if not measured:
            return None
        n, ms = max(measured)
        value = ms * (seqlen / n) ** 2
        self.notes.append(f"cuDNN at {seqlen} extrapolated from {n} ({ms:.1f} ms) by the quadratic law: {value:.0f} ms")
        return value

    def part_dense1m(self) -> None:
        s = self.sizes
        if s.huge in self.baselines or not self.fits("cuDNN 1m", 45):
            return
        key = ("mid", s.huge, self.geometry.name)
        if key not in self.inputs:
            self.notes.append("dense1m: the 1M inputs are gone (1m part skipped or failed); not measured")
            return
        times = self.dense(s.huge, self.inputs[key], flash=False, warmup=0, repeat=1)
        if isinstance(times.get("cudnn"), float):
            for row in self.rows:
                if row.get("part") == "1m" and "speedup_vs_cudnn" in row:
                    row["cudnn_ms_measured"] = times["cudnn"]
                    row["speedup_vs_cudnn_measured"] = times["cudnn"] / row["total_ms"]
            self.save()

    def part_native128k(self) -> None:
        s = self.sizes
        native = self.h.GEOMETRIES["smollm2"]
        if native == self.geometry or not self.fits("native128k", 30):
            return
        self.drop(s.huge)
        qkv = self.real(s.long, "mid", geometry=native)
        times = self.h.dense_baselines(*qkv, repeat=s.repeat, flex=False)
        self.case("native128k", "128k real-mid SmolLM2 geometry a0.95 w8% s5%", self.real_name("mid"), s.long, qkv,
                  0.95, 0.08, 0.05, baselines=times)
        self.inputs.pop(("mid", s.long, native.name), None)

    def part_synth1m(self) -> None:
        s = self.sizes
        if not self.fits("synth1m", 120):
            return
        self.drop()
        base = dict(self.baselines.get(s.huge, {}))
        if "cudnn" not in base:
            extrapolated = self.extrapolated_cudnn(s.huge)
            if extrapolated is not None:
                base.update(cudnn=extrapolated, cudnn_extrapolated=True)
        self.case("synth1m", "1m synthetic a0.95 w1% s1%", "synthetic", s.huge, self.synthetic(s.huge), 0.95, 0.01,
                  0.01, repeat=1, warmup=0, baselines=base)

    # ---- targets --------------------------------------------------------------------------------
    def find(self, part: str, label_start: str) -> dict | None:
        return next((r for r in self.rows if r.get("part") == part and r.get("label", "").startswith(label_start)), None)

    def targets(self) -> list[dict]:
        s, out = self.sizes, []

        def add(target, value, met, note=""):
            out.append({"target": target, "value": value, "met": met, "note": note})

        for band in ("mid", "late"):
            r = self.find("main128k", f"128k real-{band} ")
            if r:
                x_c, x_f = r.get("speedup_vs_cudnn"), r.get("speedup_vs_flash")
                add(f"128K real-{band} a0.95 >= 2.5x cuDNN", _fmt(x_c, "x") + f", error {r['error']:.4f}",
                    _ge(x_c, 2.5), f"density {r['density']:.3f}")
                add(f"128K real-{band} a0.95 >= 4x flash", _fmt(x_f, "x") + f", error {r['error']:.4f}", _ge(x_f, 4.0))
                add(f"128K real-{band} plan <= 15% of operator", _fmt(r["plan_share"] * 100, "%"),
                    r["plan_share"] <= 0.15, f"plan {r['plan_ms']:.1f} of {r['total_ms']:.1f} ms")
                if r.get("extra_memory_vs_inputs") is not None:
                    add(f"128K real-{band} extra memory <= 10% of inputs", _fmt(r["extra_memory_vs_inputs"] * 100, "%"),
                        r["extra_memory_vs_inputs"] <= 0.10)
        r = self.find("synth128k", "128k synthetic")
        if r:
            add("128K synthetic a0.95 (for comparison)", _fmt(r.get("speedup_vs_cudnn"), "x cuDNN")
                + f", error {r['error']:.4f}", None, f"density {r['density']:.3f}")
        choice = next((r for r in self.rows if r.get("alpha099_choice")), None)
        if choice:
            ref = self.find("alpha099", "128k real-mid a0.99 w8% s5%")
            add(f"128K real-mid a0.99 >= 2x cuDNN (w{choice['window_ratio']:.0%} s{choice['sample_ratio']:.0%})",
                _fmt(choice.get("speedup_vs_cudnn"), "x") + f", error {choice['error']:.4f}",
                _ge(choice.get("speedup_vs_cudnn"), 2.0), f"reference error (w8% s5%) {ref['error']:.4f}" if ref else "")
            late = self.find("alpha099", "128k real-late")
            if late:
                add("128K real-late a0.99 at that choice", _fmt(late.get("speedup_vs_cudnn"), "x")
                    + f", error {late['error']:.4f}", _ge(late.get("speedup_vs_cudnn"), 2.0))
        huge = [r for r in self.rows if r.get("part") == "1m"]
        if huge:
            best = max(huge, key=lambda r: r.get("speedup_vs_cudnn_measured") or r.get("speedup_vs_cudnn") or 0)
            x = best.get("speedup_vs_cudnn_measured") or best.get("speedup_vs_cudnn")
            how = "measured cuDNN" if best.get("speedup_vs_cudnn_measured") else (
                "cuDNN EXTRAPOLATED from 512K" if best.get("cudnn_extrapolated") else "measured cuDNN")
            add(f"1M a0.95 >= 10x cuDNN (w{best['window_ratio']:.0%} s{best['sample_ratio']:.0%})",
                _fmt(x, "x") + f", error {best['error']:.4f}", _ge(x, 10.0),
                f"{how}; operator {best['total_ms']:.0f} ms, density {best['density']:.3f}")
        for kind in ("real", "synthetic"):
            rows = sorted((r for r in self.rows if r.get("part") == "breakeven" and kind in r.get("label", "")),
                          key=lambda r: r["seqlen"])
            if rows:
                speed = ", ".join(f"{r['seqlen'] // 1024}K {_fmt(r.get('speedup_vs_cudnn'), 'x')}" for r in rows)
                even = next((r["seqlen"] for i, r in enumerate(rows)
                             if all((x.get("speedup_vs_cudnn") or 0) >= 1.0 for x in rows[i:])), None)
                add(f"break-even vs cuDNN ({kind})", f"{even} tokens" if even else "not reached in range", None, speed)
        first = next((r for r in self.rows if "first_call_s" in r), None)
        if first:
            add("first-call (compile) time", _fmt(first["first_call_s"], " s"), None, first.get("label", ""))
        seen, recompiles = set(), []
        for r in self.rows:
            if "first_call_s" not in r:
                continue
            if seen and r["seqlen"] not in seen and r.get("kernels_compiled") is not None and not r.get("options"):
                recompiles.append((r["seqlen"], r["kernels_compiled"], r["first_call_s"]))
            seen.add(r["seqlen"])
        if recompiles:
            add("no recompilation per new length", ", ".join(f"{n}: {c} compiled, first call {t:.2f} s"
                                                             for n, c, t in recompiles),
                all(c == 0 for _, c, _ in recompiles), "first case at each new length after the first")
        return out

    def print_table(self) -> None:
        print("\nTargets")
        print("| target | value | met | note |")
        print("|---|---|---|---|")
        for t in self.targets():
            met = {True: "met", False: "NOT met", None: "-"}[t["met"]]
            print(f"| {t['target']} | {t['value']} | {met} | {t['note']} |")
        print("\nCases")
        head = ("part", "label", "density", "error", "plan ms", "attn ms", "total ms", "cuDNN ms", "x cuDNN", "x flash")
        print(" | ".join(head))
        for r in self.rows:
            if "total_ms" not in r:
                continue
            print(" | ".join([r["part"], r["label"], _fmt(r.get("density")), _fmt(r.get("error")),
                              _fmt(r.get("plan_ms")), _fmt(r.get("attention_ms")), _fmt(r.get("total_ms")),
                              _fmt(r.get("cudnn_ms")) + ("*" if r.get("cudnn_extrapolated") else ""),
                              _fmt(r.get("speedup_vs_cudnn")), _fmt(r.get("speedup_vs_flash"))]))
        if self.skipped:
            print("skipped (time budget): " + ", ".join(x["case"] for x in self.skipped))
        if self.errors:
            print("errors: " + "; ".join(f"{e['case']}: {e['error'][:160]}" for e in self.errors))
        print(f"{len(self.rows)} rows in {time.time() - self.started:.0f} s; * = extrapolated; -> {self.out}")


def _fmt(value, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"


def _ge(value, bound: float) -> bool | None:
    return None if not isinstance(value, (int, float)) else bool(value >= bound)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="suite-out")
    parser.add_argument("--budget-s", type=float, default=500.0, help="stop starting cases past this (seconds)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list, in order, from: {', '.join(PARTS)}")
    parser.add_argument("--geometry", default=None, help="llama3 (default on the GPU), smollm2 (dry-run default)")
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU (TRITON_INTERPRET=1, wall-clock times): checks for crashes")
    parser.add_argument("--dry-length", type=int, default=None, help="with --dry-run: the length (default 512)")
    parser.add_argument("--no-real", action="store_true", help="dry run without SmolLM2 (synthetic parts only)")
    parser.add_argument("--strict", action="store_true", help="with --dry-run: stop at the first error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"suite: unknown parts {unknown}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before sampleattn.kernels is imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("suite: no CUDA GPU (use --dry-run on the CPU)", file=sys.stderr)
        return 2
    if args.no_real:
        parts = [p for p in parts if p in ("synth128k", "synth1m")]
    suite = Suite(args)
    print(f"[suite] parts {parts}, budget {args.budget_s:.0f} s, device {suite.device}, "
          f"geometry {suite.geometry.name}", flush=True)
    for part in parts:
        if suite.left() <= 0:
            suite.skipped.append({"case": part, "estimate_s": None, "left_s": round(suite.left(), 1)})
            continue
        print(f"[suite] part {part} at {time.time() - suite.started:.0f} s", flush=True)
        suite.guarded(part, getattr(suite, f"part_{part}"))
    suite.save()
    suite.print_table()
    failed = [r["label"] for r in suite.rows if r.get("check_ok") is False]
    if failed:
        print(f"own-plan check failed: {failed}")
    return 1 if failed or (args.dry_run and suite.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
