"""Every speed target measured in one process, cheapest and most important first.

Run on the lent H200 (docs/benchmarks.md, "The paper's rule at 128K and 1M")::

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

Parts added after the first GPU run (after the ones above in the default order, so that a rerun
of the first nine stays comparable; ``--parts flex128k,alphas128k,...`` runs them alone):

``flex128k``   128K real (middle and late bands), alpha 0.95 / 8% / 5%: cuDNN, flash and
               FlexAttention dense causal timed side by side, and FlexAttention block-sparse with
               the operator's selection rounded to 128x128 blocks (`harness.flex_block_sparse_ms`,
               where its block mask fits in memory).
``alphas128k`` 128K real (both bands), alpha 0.80 and 0.90 at window 8% / sample 5%.
``grid128k``   128K real (middle band), alpha 0.95: windows 2/4/8% x sample ratios 1/2/5%.
``chatglm2``   128K real (both bands) in ChatGLM2-6B's geometry (32 query / 2 KV heads, d128).
``batch4``     32K real (both bands), batch 4, Llama-3-8B geometry.
``mid512k``    256K and 512K real (middle band) at w8% s5% and w1% s1% against cuDNN measured at
               each length: the speed-up curve between 128K and 1M. Everything longer than 128K
               is freed before it starts and after each length (1M-class inputs never meet these).

Each added part first frees every input longer than 128K tokens; the parts that capture inputs no
other part uses (chatglm2, batch4, mid512k) free them when they end.

Before each case the time left is compared with the case's estimate; a case that does not fit is
recorded as skipped. Every finished case is appended to ``OUT/results.jsonl`` and ``OUT/suite.json``
(rows, targets, skipped cases, environment) is rewritten, so a run stopped early keeps what it
measured. A table of the targets is printed last. Exit status 0, or 1 if a case's own check failed.

``--dry-run``: the same parts at tiny sizes on the CPU (kernels under TRITON_INTERPRET=1, wall-clock
times, PyTorch's default SDPA in place of cuDNN/flash, FlexAttention not timed), to find crashes
before spending GPU time. ``--no-real``: no SmolLM2 capture; the synthetic parts, and the added
parts on synthetic inputs in place of the real ones (middle band only).
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

FIRST_PARTS = ("main128k", "synth128k", "alpha099", "breakeven", "rescored", "1m", "dense1m", "native128k",
               "synth1m")
#: Added after the first GPU run; after FIRST_PARTS in the default order.
ADDED_PARTS = ("flex128k", "alphas128k", "grid128k", "chatglm2", "batch4", "mid512k")
PARTS = FIRST_PARTS + ADDED_PARTS


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
    mid: tuple[int, ...] = (262144, 524288)  # mid512k: the lengths between `long` and `huge`
    batch_seqlen: int = 32768  # batch4: the length
    batch: int = 4  # batch4: the batch
    grid_step: int = 1  # grid128k: every grid_step-th point (dry runs: 3 of 9, the same code path)


GPU_SIZES = Sizes("llama3", 131072, 1048576, (262144, 524288), (4096, 8192, 16384, 32768, 65536), 14, 24,
                  repeat=7, huge_repeat=2, scale=1.0)
DRY_SIZES = Sizes("smollm2", 512, 512, (256, 512), (256, 512), 14, 24, repeat=1, huge_repeat=1, scale=0.0,
                  mid=(256, 512), batch_seqlen=256, batch=4, grid_step=4)

# Wider windows first: at alpha 0.99 a window of 12-16% leaves fewer stripe columns than 8% does
# (sattn-bench on the same inputs, 2026-12-02: w12% s5% error 0.0414 in 137.9 ms against the
# reference's 0.0523 in 146.7 ms), so they are the likeliest fastest no-worse points and are
# measured before a tight budget stops the grid.
GRID_099 = [(0.12, 0.05), (0.16, 0.02), (0.12, 0.02), (0.16, 0.05), (0.04, 0.02), (0.02, 0.01), (0.04, 0.01),
            (0.02, 0.02), (0.08, 0.02), (0.08, 0.01), (0.04, 0.05), (0.02, 0.05)]
HUGE_CONFIGS = [(0.01, 0.01), (0.02, 0.01), (0.01, 0.02)]
ALPHAS_128K = (0.80, 0.90)
GRID_128K = [(w, s) for w in (0.08, 0.04, 0.02) for s in (0.05, 0.02, 0.01)]  # w8% s5% first: the reference
MID_CONFIGS = [(0.08, 0.05), (0.01, 0.01)]  # the 128K configuration and the 1M one

# Time estimates (seconds on the H200, before `Sizes.scale`) of the added parts; guesses from the
# run of 2026-11-29, not measurements of these cases.
EST_CAPTURE_FIRST = 60  # the first SmolLM2 capture of a process: model load + a 128K prefill
EST_CAPTURE_128K = 25  # a later 128K capture (both bands)
EST_FLEX_BASELINES = 45  # cuDNN + flash + FlexAttention dense at 128K, FlexAttention's compile included
EST_FLEX_CASE_FIRST = 35  # an operator case + FlexAttention block-sparse (its compile included)
EST_FLEX_CASE = 12
EST_CASE_128K = 6
EST_CASE_128K_SHORT = 5  # repeat 5 after 1 warm-up
EST_BATCH4 = {"capture": 15, "dense": 5, "case": 6}
EST_MID = {262144: {"capture": 20, "dense": 5, "case": 10}, 524288: {"capture": 40, "dense": 16, "case": 25}}


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
                                             breakeven=(n // 2, n), mid=(n // 2, n), batch_seqlen=n // 2)
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
        self.inputs: dict[tuple, tuple] = {}  # (kind, seqlen, geometry, batch) -> (q, k, v)
        self.baselines: dict[int | tuple, dict] = {}  # seqlen (this geometry, batch 1) or a key -> dense times
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
                          "speedup_vs_flash", "speedup_vs_flex", "flex_block_sparse_ms",
                          "speedup_vs_flex_block_sparse", "first_call_s", "kernels_compiled", "check_ok",
                          "elapsed_s")}
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
    def real(self, seqlen: int, band: str, geometry=None, batch: int = 1):
        """Real SmolLM2 q/k/v of the middle or late layer band at ``seqlen``, in ``geometry``.
        One prefill captures both bands at a length; the tensors are kept until `drop`."""
        geometry = geometry or self.geometry
        key = (band, seqlen, geometry.name, batch)
        if key not in self.inputs:
            h = self.h
            bands = {"mid": h.smollm2_layers_for(geometry, self.sizes.mid_layer),
                     "late": h.smollm2_layers_for(geometry, self.sizes.late_layer)}
            wanted = [band] if seqlen > self.sizes.long else list(bands)  # at 1M: the band asked for only
            layers = sorted({layer for b in wanted for layer in bands[b]})
            first = not any(note.startswith("SmolLM2 capture") for note in self.notes)
            started = time.time()
            captured = h.capture_smollm2(seqlen, layers, batch=batch, device=self.device)
            if self.device == "cuda":
                self.torch.cuda.synchronize()  # the prefill runs asynchronously: time it to its end
            capture_s = time.time() - started
            for b in wanted:
                self.inputs[(b, seqlen, geometry.name, batch)] = h.smollm2_to_geometry(captured, bands[b], geometry,
                                                                                       dtype=self.dtype)
            del captured
            self.notes.append(f"SmolLM2 capture at {seqlen} tokens{f' x batch {batch}' if batch > 1 else ''}, "
                              f"{geometry.name} geometry, layers {layers} (bands {wanted}): "
                              f"{capture_s:.1f} s{' (includes the model load)' if first else ''}, RoPE scaling "
                              f"{h.smollm2_rope_scaling()}")
        return self.inputs[key]

    def synthetic(self, seqlen: int, geometry=None, batch: int = 1):
        geometry = geometry or self.geometry
        key = ("synthetic", seqlen, geometry.name, batch)
        if key not in self.inputs:
            self.inputs[key] = self.h.make_inputs(geometry, seqlen, batch, "synthetic", device=self.device,
                                                  dtype=self.dtype)
        return self.inputs[key]

    def drop(self, seqlen: int | None = None) -> None:
        for key in [k for k in self.inputs if seqlen is None or k[1] == seqlen]:
            del self.inputs[key]
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def drop_above(self, seqlen: int) -> None:
        """Free every input longer than ``seqlen`` tokens (the added parts' first step: the 1M
        inputs of `1m`/`dense1m`/`synth1m` must not meet the 256K/512K ones)."""
        for key in [k for k in self.inputs if k[1] > seqlen]:
            del self.inputs[key]
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def drop_where(self, geometry: str | None = None, batch: int | None = None) -> None:
        for key in [k for k in self.inputs if (geometry is None or k[2] == geometry) and (batch is None or k[3] == batch)]:
            del self.inputs[key]
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def dense(self, seqlen: int, qkv, *, flash: bool = True, flex: bool = False, warmup: int = 2,
              repeat: int | None = None) -> dict:
        """cuDNN (and flash) at ``seqlen``, measured once per length: dense attention's time does
        not depend on the values, so every input kind at that length shares it. With ``flex``,
        FlexAttention (dense causal) too, and cuDNN/flash again next to it if they were timed
        without it. Inputs in another geometry or batch than the suite's get their own entry."""
        q, k, v = qkv
        geometry = self.geometry_name(q, k)
        key = seqlen if (geometry, q.shape[0]) == (self.geometry.name, 1) else (geometry, q.shape[0], seqlen)
        if key not in self.baselines or (flex and "flex" not in self.baselines[key]):
            backends = ("cudnn", "flash") if flash else ("cudnn",)
            times = self.h.dense_baselines(q, k, v, repeat=repeat or self.sizes.repeat, flex=flex,
                                           warmup=0 if self.args.dry_run else warmup, backends=backends)
            if flex and "flex" not in times:  # the CPU: FlexAttention is timed on a GPU only
                times.update(flex=None, flex_error="not timed on the CPU")
            times["measured_on"] = f"{seqlen} tokens, warmup {warmup}, repeat {repeat or self.sizes.repeat}"
            self.baselines[key] = times
            label = f"dense baselines {seqlen}" if isinstance(key, int) else \
                f"dense baselines {seqlen} {geometry} batch {q.shape[0]}"
            self.record({"part": "dense", "label": label, "seqlen": seqlen, "geometry": geometry,
                         "batch": q.shape[0], **{k_: v_ for k_, v_ in times.items()}})
        return self.baselines[key]

    def geometry_name(self, q, k) -> str:
        shape = (q.shape[2], k.shape[2], q.shape[3])
        return next((g.name for g in self.h.GEOMETRIES.values() if (g.nheads_q, g.nheads_kv, g.head_dim) == shape),
                    "{}/{}/d{}".format(*shape))

    def case(self, part: str, label: str, inputs: str, seqlen: int, qkv, alpha: float, window: float,
             sample: float, *, options: tuple = (), repeat: int | None = None, warmup: int = 2,
             memory: bool = False, baselines: dict | None = None, flex_sparse: bool = False,
             band: str | None = None) -> dict:
        h = self.h
        q, k, v = qkv
        case = h.Case(self.geometry_name(q, k), seqlen, q.shape[0], inputs, alpha, window, sample, "kv_head",
                      options=options)
        base = baselines if baselines is not None else self.baselines.get(seqlen, {})
        if self.args.dry_run:  # the interpreter takes seconds per call: one untimed-warm-up run
            repeat, warmup = 1, 0
        row = h.run_case(case, q, k, v, base, error_rows=self.args.error_rows, repeat=repeat or self.sizes.repeat,
                         warmup=warmup, flex_sparse=flex_sparse)
        if memory:
            row["extra_memory_gib"], row["extra_memory_vs_inputs"] = h.extra_memory_gib(q, k, v, case.config())
        if isinstance(row.get("flex_block_sparse_ms"), float):
            row["speedup_vs_flex_block_sparse"] = row["flex_block_sparse_ms"] / row["total_ms"]
        row.update(part=part, label=label)
        if band is not None:
            row["band"] = band
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
        self.inputs.pop(("synthetic", s.long, self.geometry.name, 1), None)

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
        key = ("mid", s.huge, self.geometry.name, 1)
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
        self.inputs.pop(("mid", s.long, native.name, 1), None)

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

    # ---- parts added after the first GPU run -------------------------------------------------
    def bands(self) -> tuple[str, ...]:
        """Both layer bands on real inputs; with --no-real, whose stand-in is one synthetic input
        for both, the middle one only."""
        return ("mid",) if self.args.no_real else ("mid", "late")

    def source(self, seqlen: int, band: str, geometry=None, batch: int = 1):
        """(inputs name, label word, (q, k, v)): real SmolLM2 heads of ``band``, or with --no-real
        the synthetic inputs in their place (said so in the label)."""
        if self.args.no_real:
            return "synthetic", f"synthetic(for {band})", self.synthetic(seqlen, geometry, batch)
        return self.real_name(band), f"real-{band}", self.real(seqlen, band, geometry, batch)

    def capture_estimate(self, seqlen: int, later_s: float = EST_CAPTURE_128K, geometry=None, batch: int = 1) -> float:
        """Seconds to get real inputs at ``seqlen``: none when held (or with --no-real); the model
        load on top for the first capture of the process."""
        geometry = geometry or self.geometry
        if self.args.no_real or ("mid", seqlen, geometry.name, batch) in self.inputs:
            return 0.0
        loaded = any(note.startswith("SmolLM2 capture") for note in self.notes)
        return later_s if loaded else max(EST_CAPTURE_FIRST, later_s + EST_CAPTURE_FIRST - EST_CAPTURE_128K)

    def part_flex128k(self) -> None:
        s = self.sizes
        self.drop_above(s.long)
        if not self.fits("flex128k baselines", self.capture_estimate(s.long) + EST_FLEX_BASELINES):
            return
        _, _, qkv = self.source(s.long, "mid")
        base = self.dense(s.long, qkv, flex=True)  # cuDNN, flash and FlexAttention side by side
        for i, band in enumerate(self.bands()):
            if not self.fits(f"flex128k {band}", EST_FLEX_CASE_FIRST if i == 0 else EST_FLEX_CASE):
                return
            name, word, qkv = self.source(s.long, band)
            self.case("flex128k", f"128k {word} a0.95 w8% s5% with FlexAttention", name, s.long, qkv, 0.95, 0.08,
                      0.05, baselines=base, flex_sparse=True, band=band)

    def part_alphas128k(self) -> None:
        s = self.sizes
        self.drop_above(s.long)
        if not self.fits("alphas128k capture", self.capture_estimate(s.long) + EST_CASE_128K):
            return
        for band in self.bands():
            name, word, qkv = self.source(s.long, band)
            self.dense(s.long, qkv)
            for alpha in ALPHAS_128K:
                if not self.fits(f"alphas128k {band} a{alpha}", EST_CASE_128K):
                    return
                self.case("alphas128k", f"128k {word} a{alpha:.2f} w8% s5%", name, s.long, qkv, alpha, 0.08, 0.05,
                          band=band)

    def part_grid128k(self) -> None:
        s = self.sizes
        self.drop_above(s.long)
        if not self.fits("grid128k capture", self.capture_estimate(s.long) + EST_CASE_128K_SHORT):
            return
        name, word, qkv = self.source(s.long, "mid")
        self.dense(s.long, qkv)
        rows = []
        for window, sample in GRID_128K[::s.grid_step]:
            if rows and not self.fits(f"grid128k w{window} s{sample}", EST_CASE_128K_SHORT):
                break
            rows.append(self.case("grid128k", f"128k {word} a0.95 w{window:.0%} s{sample:.0%}", name, s.long, qkv,
                                  0.95, window, sample, repeat=5, warmup=1, band="mid"))
        ref = rows[0]  # w8% s5%
        best = min((r for r in rows if r["error"] <= ref["error"] * (1 + 1e-9)), key=lambda r: r["total_ms"])
        self.notes.append(f"grid128k: fastest with error <= w8% s5% ({ref['error']:.4f}) is window "
                          f"{best['window_ratio']}, sample {best['sample_ratio']} ({best['total_ms']:.1f} ms, error "
                          f"{best['error']:.4f}); {len(rows)} of {len(GRID_128K)} points measured")

    def part_chatglm2(self) -> None:
        s, g = self.sizes, self.h.GEOMETRIES["chatglm2"]
        self.drop_above(s.long)
        if not self.fits("chatglm2 capture", self.capture_estimate(s.long, geometry=g) + 10 + EST_CASE_128K):
            return
        try:
            for i, band in enumerate(self.bands()):
                if i and not self.fits(f"chatglm2 {band}", EST_CASE_128K):
                    return
                name, word, qkv = self.source(s.long, band, g)
                base = self.dense(s.long, qkv)
                self.case("chatglm2", f"128k {word} chatglm2 geometry a0.95 w8% s5%", name, s.long, qkv, 0.95, 0.08,
                          0.05, baselines=base, memory=True, band=band)
            if not self.args.no_real:
                self.notes.append("chatglm2: real inputs in ChatGLM2-6B's geometry (32 query / 2 KV heads, d128) are "
                                  "the 2 first KV heads of one SmolLM2 layer per band (14; 24); each KV head's 16 "
                                  "query heads repeat its 3 real ones (6 distinct query heads of 32)")
        finally:
            self.drop_where(geometry=g.name)

    def part_batch4(self) -> None:
        s = self.sizes
        n, b = s.batch_seqlen, s.batch
        self.drop_above(s.long)
        est = EST_BATCH4
        if not self.fits("batch4 capture", self.capture_estimate(n, est["capture"], batch=b) + est["dense"]
                         + est["case"]):
            return
        try:
            for i, band in enumerate(self.bands()):
                if i and not self.fits(f"batch4 {band}", est["case"]):
                    return
                name, word, qkv = self.source(n, band, batch=b)
                base = self.dense(n, qkv)
                self.case("batch4", f"{_length(n)} batch {b} {word} a0.95 w8% s5%", name, n, qkv, 0.95, 0.08, 0.05,
                          baselines=base, memory=True, band=band)
        finally:
            self.drop_where(batch=b)

    def part_mid512k(self) -> None:
        s = self.sizes
        self.drop_above(s.long)  # the 1M inputs of earlier parts
        for seqlen in s.mid:
            est = EST_MID.get(seqlen, EST_MID[max(EST_MID)])
            need = self.capture_estimate(seqlen, est["capture"]) + (0 if seqlen in self.baselines else est["dense"])
            if not self.fits(f"mid512k {seqlen}", need + est["case"]):
                return
            try:
                self._mid_length(seqlen, est["case"])  # its tensors die with its frame
            finally:
                self.drop(seqlen)  # before the next, longer length

    def _mid_length(self, seqlen: int, case_s: float) -> None:
        s = self.sizes
        name, word, qkv = self.source(seqlen, "mid")
        base = self.dense(seqlen, qkv, flash=False, warmup=1, repeat=2)  # reused from `1m` where it ran
        for i, (window, sample) in enumerate(MID_CONFIGS):
            if i and not self.fits(f"mid512k {seqlen} w{window} s{sample}", case_s):
                return
            self.case("mid512k", f"{_length(seqlen)} {word} a0.95 w{window:.0%} s{sample:.0%}", name, seqlen, qkv,
                      0.95, window, sample, repeat=3 if seqlen <= 262144 else s.huge_repeat, warmup=1,
                      baselines=base, memory=i == 0, band="mid")

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
        self.added_targets(add)
        first = next((r for r in self.rows if "first_call_s" in r), None)
        if first:
            add("first-call (compile) time", _fmt(first["first_call_s"], " s"), None, first.get("label", ""))
        seen, recompiles = set(), []
        for r in self.rows:
            if "first_call_s" not in r:
                continue
            if r.get("geometry") != self.geometry.name or r.get("batch", 1) != 1:
                continue  # another geometry or batch: not a new length
            if seen and r["seqlen"] not in seen and r.get("kernels_compiled") is not None and not r.get("options"):
                recompiles.append((r["seqlen"], r["kernels_compiled"], r["first_call_s"]))
            seen.add(r["seqlen"])
        if recompiles:
            add("no recompilation per new length", ", ".join(f"{n}: {c} compiled, first call {t:.2f} s"
                                                             for n, c, t in recompiles),
                all(c == 0 for _, c, _ in recompiles), "first case at each new length after the first")
        return out

    def added_targets(self, add) -> None:
        """The targets-table lines of the parts added after the first GPU run."""
        def band_of(r):
            label = r.get("label", "")
            return r.get("band") or ("late" if "real-late" in label else "mid" if "real-mid" in label else None)

        def rows(part, band=None):
            return [r for r in self.rows if r.get("part") == part and "total_ms" in r
                    and (band is None or band_of(r) == band)]

        def word(r):
            return "synthetic" if r.get("inputs") == "synthetic" else f"real-{band_of(r)}"

        def point(r):
            return f"w{r['window_ratio']:.0%} s{r['sample_ratio']:.0%}"

        for r in rows("flex128k"):
            bs = r.get("flex_block_sparse_ms")
            add(f"128K {word(r)} a0.95 w8% s5% vs FlexAttention (dense causal / block-sparse, same selection in "
                "128-blocks)", f"{_fmt(r.get('speedup_vs_flex'), 'x')} / {_fmt(r.get('speedup_vs_flex_block_sparse'), 'x')}",
                None, f"operator {r['total_ms']:.1f} ms; Flex dense {_fmt(r.get('flex_ms'), ' ms')}, block-sparse "
                + (bs if isinstance(bs, str) else _fmt(bs, " ms")) + f"; cuDNN {_fmt(r.get('cudnn_ms'), ' ms')}, "
                f"flash {_fmt(r.get('flash_ms'), ' ms')} (same process)")
        for band in ("mid", "late"):
            found = rows("alphas128k", band)
            if found:
                ref = next((r for r in rows("main128k", band) + rows("flex128k", band)
                            if word(r) == word(found[0]) and r.get("geometry") == found[0].get("geometry")), None)
                points = found + ([ref] if ref else [])
                add(f"128K {word(found[0])} w8% s5%: speed-up by alpha",
                    "; ".join(f"a{r['alpha']:.2f} {_fmt(r.get('speedup_vs_cudnn'), 'x')} (error {r['error']:.4f}, "
                              f"density {r['density']:.3f})" for r in points), None, "x cuDNN")
        grid = rows("grid128k")
        if grid:
            ref = next((r for r in grid if (r["window_ratio"], r["sample_ratio"]) == (0.08, 0.05)), grid[0])
            best = min((r for r in grid if r["error"] <= ref["error"] * (1 + 1e-9)), key=lambda r: r["total_ms"])
            fastest = min(grid, key=lambda r: r["total_ms"])
            add(f"128K {word(ref)} a0.95 window x sample grid: fastest with error <= w8% s5%",
                f"{point(best)}: {_fmt(best.get('speedup_vs_cudnn'), 'x')} cuDNN, error {best['error']:.4f}", None,
                f"w8% s5%: {_fmt(ref.get('speedup_vs_cudnn'), 'x')}, error {ref['error']:.4f}; fastest: "
                f"{point(fastest)} {_fmt(fastest.get('speedup_vs_cudnn'), 'x')}, error {fastest['error']:.4f}; "
                f"{len(grid)} of {len(GRID_128K)} points")
        for r in rows("chatglm2"):
            x_c, x_f = r.get("speedup_vs_cudnn"), r.get("speedup_vs_flash")
            add(f"128K ChatGLM2 geometry {word(r)} a0.95 >= 2.5x cuDNN", _fmt(x_c, "x") + f", error {r['error']:.4f}",
                _ge(x_c, 2.5), f"density {r['density']:.3f}; the Llama-geometry bound")
            add(f"128K ChatGLM2 geometry {word(r)} a0.95 >= 4x flash", _fmt(x_f, "x"), _ge(x_f, 4.0),
                f"plan {_fmt(r['plan_share'] * 100, '%')} of {r['total_ms']:.1f} ms")
        for r in rows("batch4"):
            one = next((x for x in rows("breakeven") if x["seqlen"] == r["seqlen"] and "real" in x.get("label", "")
                        and word(r).startswith("real")), None)
            add(f"{_length(r['seqlen'])} batch {r['batch']} {word(r)} a0.95 w8% s5%",
                f"{_fmt(r.get('speedup_vs_cudnn'), 'x')} cuDNN, {_fmt(r.get('speedup_vs_flash'), 'x')} flash, error "
                f"{r['error']:.4f}", None, f"operator {r['total_ms']:.1f} ms, density {r['density']:.3f}"
                + (f"; batch 1 (breakeven): {_fmt(one.get('speedup_vs_cudnn'), 'x')}" if one else ""))
        mid = rows("mid512k")
        for window, sample in MID_CONFIGS:
            curve = [r for r in rows("main128k", "mid") + rows("flex128k", "mid") + mid + rows("1m", "mid")
                     if (r["window_ratio"], r["sample_ratio"]) == (window, sample) and r["alpha"] == 0.95]
            by_length = {}
            for r in curve:
                by_length.setdefault(r["seqlen"], r)
            if any(r.get("part") == "mid512k" for r in by_length.values()):
                add(f"speed-up vs cuDNN by length, mid band, a0.95 w{window:.0%} s{sample:.0%}",
                    ", ".join(f"{_length(n)} {_fmt(r.get('speedup_vs_cudnn_measured') or r.get('speedup_vs_cudnn'), 'x')}"
                              + ("*" if r.get("cudnn_extrapolated") and not r.get("speedup_vs_cudnn_measured") else "")
                              for n, r in sorted(by_length.items())), None,
                    "cuDNN measured at each length (* = extrapolated); " + ", ".join(
                        f"{_length(n)} error {r['error']:.3f}" for n, r in sorted(by_length.items())))

    def print_table(self) -> None:
        print("\nTargets")
        print("| target | value | met | note |")
        print("|---|---|---|---|")
        for t in self.targets():
            met = {True: "met", False: "NOT met", None: "-"}[t["met"]]
            print(f"| {t['target']} | {t['value']} | {met} | {t['note']} |")
        print("\nCases")
        head = ("part", "label", "density", "error", "plan ms", "attn ms", "total ms", "cuDNN ms", "x cuDNN", "x flash",
                "x flex", "x flex block-sparse")
        print(" | ".join(head))
        for r in self.rows:
            if "total_ms" not in r:
                continue
            print(" | ".join([r["part"], r["label"], _fmt(r.get("density")), _fmt(r.get("error")),
                              _fmt(r.get("plan_ms")), _fmt(r.get("attention_ms")), _fmt(r.get("total_ms")),
                              _fmt(r.get("cudnn_ms")) + ("*" if r.get("cudnn_extrapolated") else ""),
                              _fmt(r.get("speedup_vs_cudnn")), _fmt(r.get("speedup_vs_flash")),
                              _fmt(r.get("speedup_vs_flex")), _fmt(r.get("speedup_vs_flex_block_sparse"))]))
        if self.skipped:
            print("skipped (time budget): " + ", ".join(x["case"] for x in self.skipped))
        if self.errors:
            print("errors: " + "; ".join(f"{e['case']}: {e['error'][:160]}" for e in self.errors))
        print(f"{len(self.rows)} rows in {time.time() - self.started:.0f} s; * = extrapolated; -> {self.out}")


def _fmt(value, unit: str = "") -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"


def _length(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


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
    parser.add_argument("--no-real", action="store_true",
                        help="dry run without SmolLM2: the synthetic parts, and the added parts on synthetic inputs")
    parser.add_argument("--strict", action="store_true", help="with --dry-run: stop at the first error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the parts (stderr)")
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
    if args.no_real:  # the added parts take synthetic inputs in place of the real ones
        parts = [p for p in parts if p in ("synth128k", "synth1m") or p in ADDED_PARTS]
    suite = Suite(args)
    print(f"[suite] parts {parts}, budget {args.budget_s:.0f} s, device {suite.device}, "
          f"geometry {suite.geometry.name}", flush=True)
    from .progress import case_bar

    bar = case_bar(len(parts), "suite parts", enabled=not args.no_progress)
    for part in parts:
        bar.set_postfix_str(part)
        if suite.left() <= 0:
            suite.skipped.append({"case": part, "estimate_s": None, "left_s": round(suite.left(), 1)})
            bar.update()
            continue
        print(f"[suite] part {part} at {time.time() - suite.started:.0f} s", flush=True)
        suite.guarded(part, getattr(suite, f"part_{part}"))
        bar.update()
    bar.close()
    suite.save()
    suite.print_table()
    failed = [r["label"] for r in suite.rows if r.get("check_ok") is False]
    if failed:
        print(f"own-plan check failed: {failed}")
    return 1 if failed or (args.dry_run and suite.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
