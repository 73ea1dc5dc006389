"""Every speed target of the operator in one process: the case table of `suite_cases` run in
order, cheapest and most important first.

Run on a CUDA GPU (docs/benchmarks.md, "The paper's rule at 128K and 1M")::

    python -m sampleattn.bench.suite --out OUT --budget-s 500

Parts (``--parts`` picks and orders them; `suite_cases.suite_parts` lists every case):

``main128k``   128K, Llama-3-8B geometry (32/8 heads, d128), alpha 0.95, window 8%, sample 5%, on
               real SmolLM2 q/k/v of a middle and a late layer band (`harness.smollm2_to_geometry`),
               against SDPA cuDNN and flash: speed-ups, error, plan share, extra memory, first-call time.
``synth128k``  the same case on the structured synthetic inputs.
``alpha099``   128K real (middle band), alpha 0.99: the reference at window 8% / sample 5%, then a
               grid of windows and sample ratios; the fastest whose error is no worse than the
               reference's is the choice, then measured on the late band too.
``breakeven``  4K..64K real (middle band) and synthetic against cuDNN: the break-even length.
``rescored``   128K real, alpha 0.95, the rescored selection rule.
``1m``         cuDNN at 256K and 512K (random inputs), then the operator at 1M on real inputs with
               windows and sample ratios of 1-2%; against cuDNN extrapolated from 512K by the
               quadratic law (and marked so) until ``dense1m`` measures it.
``dense1m``    cuDNN at 1M measured once (no warm-up, one repeat) on the 1M inputs.
``native128k`` 128K real inputs in SmolLM2's own geometry (9/3 heads, d64).
``synth1m``    the operator at 1M on the synthetic inputs (one timed call).
``flex128k``   128K real: cuDNN, flash and FlexAttention dense causal side by side, and
               FlexAttention block-sparse with the operator's selection in 128x128 blocks.
``alphas128k`` 128K real, alpha 0.80 and 0.90.     ``grid128k``  128K real, windows x sample ratios.
``chatglm2``   128K real in ChatGLM2-6B's geometry (32/2 heads, d128).  ``batch4``  32K, batch 4.
``mid512k``    256K and 512K real (middle band) against cuDNN at each length.

Inputs are held while later cases use them: the suite's 128K inputs while the cases are no
longer than 128K, every other input only until a case of another length, geometry or batch (and
inputs longer than 128K one kind at a time). Before each entry the time left is compared with its
estimate (`suite_cases.Case.estimate_s`, plus the inputs' capture); one that does not fit is
recorded as skipped. Every finished case is appended to ``OUT/results.jsonl`` and ``OUT/suite.json``
(rows, targets, skipped cases, environment) is rewritten, so a run stopped early keeps what it
measured. A table of the targets is printed last. Exit status 0, or 1 if a case's own check failed.

``--dry-run``: every part at tiny sizes on the CPU (kernels under TRITON_INTERPRET=1, wall-clock
times, PyTorch's default SDPA in place of cuDNN/flash, FlexAttention not timed), to find crashes
before spending GPU time. ``--no-real``: no SmolLM2 capture; the parts on synthetic inputs, and
the parts that accept it (`suite_cases.Part.stand_in`) on synthetic stand-ins (middle band only).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

from .suite_cases import PART_ORDER, Case, Dense, GPU_SIZES, Part, dry_sizes, length_word, suite_parts
from .suite_targets import fmt, suite_targets

__all__ = ["SuiteRun", "build_parser", "main"]

#: Seconds to capture real inputs of batch x length tokens: a fixed part and a part per 1M tokens
#: (about 20 s at 128K and 110 s at 1M on an H200), and once more for the model load. Budgets for
#: `SuiteRun.fits`, not measurements.
CAPTURE_S_FIXED, CAPTURE_S_PER_1M, MODEL_LOAD_S = 10.0, 100.0, 35.0


class SuiteRun:
    """One run of the suite: the inputs it holds, the dense times measured so far, its rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from sampleattn.bench import harness

        self.torch, self.h, self.args = torch, harness, args
        self.sizes = dry_sizes(args.dry_length or 512) if args.dry_run else GPU_SIZES
        if args.geometry:
            self.sizes = dataclasses.replace(self.sizes, geometry=args.geometry)
        self.parts = suite_parts(self.sizes)
        self.geometry_name = self.sizes.geometry
        self.geometry = harness.GEOMETRIES[self.geometry_name]
        self.device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
        # The Triton interpreter computes bf16 through numpy without bf16: dry runs use fp32.
        self.dtype = torch.float32 if args.dry_run else torch.bfloat16
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.jsonl").write_text("")
        self.started = time.time()
        self.rows: list[dict] = []
        self.measured: list[tuple[Case, dict]] = []
        self.skipped: list[dict] = []
        self.errors: list[dict] = []
        self.notes: list[str] = []
        self.inputs: dict[tuple, tuple] = {}  # (kind, seqlen, geometry, batch) -> (q, k, v)
        self.baselines: dict[tuple, dict] = {}  # (seqlen, geometry, batch) -> dense times
        self.chosen: dict[str, tuple[float, float]] = {}  # part -> (window, sample)
        self.captured_once = False

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

    def targets(self) -> list[dict]:
        summaries = {p.name: p.summary for p in self.parts.values() if p.summary}
        return suite_targets(self.measured, summaries, self.geometry_name)

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
                 if k in ("part", "label", "seqlen", "alpha", "window_ratio", "sample_ratio", "density", "error",
                          "plan_ms", "attention_ms", "total_ms", "cudnn_ms", "speedup_vs_cudnn", "speedup_vs_flash",
                          "speedup_vs_flex", "first_call_s", "kernels_compiled", "check_ok", "elapsed_s")}
        print(json.dumps(short), flush=True)
        self.save()
        return row

    def free(self, keep=lambda key: False) -> None:
        for key in [k for k in self.inputs if not keep(k)]:
            del self.inputs[key]
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    # ---- inputs and references -----------------------------------------------------------------
    def make_room(self, kind: str, seqlen: int, geometry: str, batch: int) -> None:
        """Free what the next entry does not use (the rule of the module docstring)."""
        long, mine = self.sizes.long, (seqlen, geometry, batch)

        def keep(key):
            if key[1:] == mine:
                return seqlen <= long or key[0] == kind
            return key[1:] == (long, self.geometry_name, 1) and seqlen <= long

        self.free(keep)

    def real(self, seqlen: int, band: str, geometry, batch: int):
        """Real SmolLM2 q/k/v of ``band`` in ``geometry``; one prefill captures both bands (at
        most 128K tokens; beyond, the band asked for only)."""
        name = self.h.geometry_name(geometry.heads)
        key = (band, seqlen, name, batch)
        if key not in self.inputs:
            h, s = self.h, self.sizes
            bands = {"mid": h.smollm2_layers_for(geometry, s.mid_layer),
                     "late": h.smollm2_layers_for(geometry, s.late_layer)}
            wanted = [band] if seqlen > s.long else list(bands)
            layers = sorted({layer for b in wanted for layer in bands[b]})
            started = time.time()
            captured = h.capture_smollm2(seqlen, layers, batch=batch, device=self.device)
            if self.device == "cuda":
                self.torch.cuda.synchronize()  # the prefill runs asynchronously: time it to its end
            for b in wanted:
                self.inputs[(b, seqlen, name, batch)] = h.smollm2_to_geometry(captured, bands[b], geometry, dtype=self.dtype)
            del captured
            self.notes.append(f"SmolLM2 capture at {seqlen} tokens x batch {batch}, {name} geometry, layers "
                              f"{layers} (bands {wanted}): {time.time() - started:.1f} s"
                              f"{'' if self.captured_once else ' (includes the model load)'}, RoPE scaling "
                              f"{h.smollm2_rope_scaling()}")
            self.captured_once = True
        return self.inputs[key]

    def synthetic(self, seqlen: int, geometry, batch: int):
        key = ("synthetic", seqlen, self.h.geometry_name(geometry.heads), batch)
        if key not in self.inputs:
            self.inputs[key] = self.h.make_inputs(geometry, seqlen, batch, "synthetic", device=self.device,
                                                  dtype=self.dtype)
        return self.inputs[key]

    def capture_s(self, case: Case, real: bool) -> float:
        """Seconds to get ``case``'s inputs: none when held or synthetic."""
        geometry = case.geometry or self.geometry_name
        if not real or (case.band, case.seqlen, geometry, case.batch) in self.inputs:
            return 0.0
        s = CAPTURE_S_FIXED + CAPTURE_S_PER_1M * case.seqlen * case.batch / (1 << 20)
        return s if self.captured_once else s + MODEL_LOAD_S

    def dense(self, seqlen: int, qkv, *, flash: bool = True, flex: bool = False, warmup: int = 2,
              repeat: int | None = None) -> dict:
        """cuDNN (and flash, FlexAttention) at ``seqlen``, measured once per length, geometry and
        batch: dense attention's time does not depend on the values."""
        q, k, v = qkv
        geometry = self.h.geometry_name((q.shape[2], k.shape[2], q.shape[3]))
        key = (seqlen, geometry, q.shape[0])
        if key not in self.baselines or (flex and "flex" not in self.baselines[key]):
            backends = ("cudnn", "flash") if flash else ("cudnn",)
            repeat = repeat or self.sizes.repeat
            times = self.h.dense_baselines(q, k, v, repeat=repeat, flex=flex, warmup=0 if self.args.dry_run else warmup,
                                           backends=backends)
            if flex and "flex" not in times:  # the CPU: FlexAttention is timed on a GPU only
                times.update(flex=None, flex_error="not timed on the CPU")
            times["measured_on"] = f"{seqlen} tokens, warmup {warmup}, repeat {repeat}"
            self.baselines[key] = times
            other = "" if (geometry, q.shape[0]) == (self.geometry_name, 1) else f" {geometry} batch {q.shape[0]}"
            self.record({"part": "dense", "label": f"dense baselines {seqlen}{other}", "seqlen": seqlen,
                         "geometry": geometry, "batch": q.shape[0], **times})
        return self.baselines[key]

    def extrapolated(self, seqlen: int) -> dict:
        """cuDNN at ``seqlen`` from the longest of `Sizes.extrapolate_from` by the quadratic law."""
        measured = [(n, b["cudnn"]) for (n, g, batch), b in self.baselines.items()
                    if n in self.sizes.extrapolate_from and (g, batch) == (self.geometry_name, 1)
                    and isinstance(b.get("cudnn"), float)]
        if not measured:
            return {}
        n, ms = max(measured)
        value = ms * (seqlen / n) ** 2
        self.notes.append(f"cuDNN at {seqlen} extrapolated from {n} ({ms:.1f} ms) by the quadratic law: {value:.0f} ms")
        return {"cudnn": value, "cudnn_extrapolated": True}

    # ---- entries ---------------------------------------------------------------------------------
    def run_case(self, case: Case, stand_in: bool) -> None:
        window, sample = case.window, case.sample
        if case.chosen_from:
            if case.chosen_from not in self.chosen:
                return
            chosen = self.chosen[case.chosen_from]
            if case.unless_chosen and chosen == (window, sample):
                return
            window, sample = window or chosen[0], sample or chosen[1]
        real = case.inputs == "real" and not stand_in
        name = f"{case.part} {case.band} {length_word(case.seqlen)} w{window} s{sample}"
        if not self.fits(name, case.estimate_s + self.capture_s(case, real)):
            return
        geometry_name = case.geometry or self.geometry_name
        geometry = self.h.GEOMETRIES[geometry_name]
        kind = case.band if real else "synthetic"
        self.make_room(kind, case.seqlen, geometry_name, case.batch)
        if real:
            qkv = self.real(case.seqlen, case.band, geometry, case.batch)
            layer = self.sizes.mid_layer if case.band == "mid" else self.sizes.late_layer
            inputs, word = f"smollm2-layer{layer}", f"real-{case.band}"
        else:
            qkv = self.synthetic(case.seqlen, geometry, case.batch)
            inputs, word = "synthetic", ("synthetic" if case.inputs == "synthetic" else f"synthetic(for {case.band})")
        if case.reference == "extrapolated":
            base = self.baselines.get((case.seqlen, geometry_name, case.batch)) or self.extrapolated(case.seqlen)
        elif case.reference == "cudnn":
            base = self.dense(case.seqlen, qkv, flash=False, warmup=1, repeat=2)
        else:
            base = self.dense(case.seqlen, qkv, flex=case.reference == "flex")
        q, k, v = qkv
        spec = self.h.Case(geometry_name, case.seqlen, case.batch, inputs, case.alpha, window, sample, "kv_head",
                           options=case.options)
        repeat, warmup = (1, 0) if self.args.dry_run else (case.repeat or self.sizes.repeat, case.warmup)
        row = self.h.run_case(spec, q, k, v, base, error_rows=self.args.error_rows, repeat=repeat, warmup=warmup,
                              flex_sparse=case.reference == "flex")
        if case.memory:
            row["extra_memory_gib"], row["extra_memory_vs_inputs"] = self.h.extra_memory_gib(q, k, v, spec.config())
        if isinstance(row.get("flex_block_sparse_ms"), float):
            row["speedup_vs_flex_block_sparse"] = row["flex_block_sparse_ms"] / row["total_ms"]
        row.update(part=case.part, label=case.label(word, window, sample), band=case.band)
        if base.get("cudnn_extrapolated"):
            row["cudnn_extrapolated"] = True
        self.measured.append((case, row))
        self.record(row)

    def run_dense(self, entry: Dense) -> None:
        if not self.fits(f"{entry.part} cuDNN {length_word(entry.seqlen)}", entry.estimate_s):
            return
        key = (entry.seqlen, self.geometry_name, 1)
        if key in self.baselines:
            return
        if entry.inputs == "held":
            held = ("mid", entry.seqlen, self.geometry_name, 1)
            if held not in self.inputs:
                self.notes.append(f"{entry.part}: the {entry.seqlen}-token inputs are gone (their part skipped or "
                                  "failed); not measured")
                return
            times = self.dense(entry.seqlen, self.inputs[held], flash=False, warmup=entry.warmup, repeat=entry.repeat)
        else:
            self.make_room("random", entry.seqlen, self.geometry_name, 1)
            g, torch = self.geometry, self.torch
            gen = torch.Generator(device=self.device).manual_seed(entry.seqlen)
            q = torch.randn(1, entry.seqlen, g.num_q_heads, g.head_dim, generator=gen, device=self.device, dtype=self.dtype)
            kv = torch.randn(2, entry.seqlen, g.num_kv_heads, g.head_dim, generator=gen, device=self.device,
                             dtype=self.dtype)
            times = self.dense(entry.seqlen, (q, kv[:1], kv[1:]), flash=False, warmup=entry.warmup,
                               repeat=entry.repeat)
            del q, kv
        if entry.fills and isinstance(times.get("cudnn"), float):
            for _, row in self.measured:
                if row.get("part") == entry.fills and row.get("seqlen") == entry.seqlen:
                    row["cudnn_ms_measured"] = times["cudnn"]
                    row["speedup_vs_cudnn_measured"] = times["cudnn"] / row["total_ms"]

    def choose(self, part: Part) -> None:
        """The fastest candidate whose error is no worse than the first's (the reference)."""
        rows = [row for case, row in self.measured if case.part == part.name and not case.chosen_from]
        if not rows:
            return
        ref = rows[0]
        best = min((r for r in rows if r["error"] <= ref["error"] * (1 + 1e-9)), key=lambda r: r["total_ms"])
        best["choice"] = True
        self.chosen[part.name] = (best["window_ratio"], best["sample_ratio"])
        self.notes.append(f"{part.name}: fastest with error <= reference ({ref['error']:.4f}) is window "
                          f"{best['window_ratio']}, sample {best['sample_ratio']} ({best['total_ms']:.1f} ms, error "
                          f"{best['error']:.4f}); {len(rows)} points measured")

    def run_part(self, part: Part) -> None:
        stand_in = self.args.no_real
        for entry in part.entries:
            if isinstance(entry, Dense):
                self.run_dense(entry)
                continue
            if stand_in and entry.band == "late":
                continue  # one synthetic stand-in serves both bands
            if part.choose and entry.chosen_from and part.name not in self.chosen:
                self.choose(part)
            self.run_case(entry, stand_in)
        if part.choose and part.name not in self.chosen:
            self.choose(part)

    def guarded(self, part: Part) -> None:
        """Run one part; an error (out of memory, a kernel failure) is recorded, not fatal."""
        try:
            self.run_part(part)
        except Exception as error:  # noqa: BLE001 - the suite must reach its other parts
            self.errors.append({"case": part.name, "error": f"{type(error).__name__}: {str(error)[:400]}",
                                "traceback": traceback.format_exc()[-2000:]})
            print(f"[suite] {part.name} failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
            if self.args.dry_run and self.args.strict:
                raise
        finally:
            gc.collect()
            if self.device == "cuda":
                self.torch.cuda.empty_cache()
            self.save()

    def print_tables(self) -> None:
        from sampleattn.tables import print_table

        print_table("Targets", ("target", "value", "met", "note"),
                    [(t["target"], t["value"], {True: "met", False: "NOT met", None: "-"}[t["met"]], t["note"])
                     for t in self.targets()])
        print_table("Cases", ("part", "label", "density", "error", "plan ms", "attn ms", "total ms", "cuDNN ms",
                              "x cuDNN", "x flash", "x flex", "x flex block-sparse"),
                    [(r["part"], r["label"], *(fmt(r.get(k)) for k in ("density", "error", "plan_ms", "attention_ms",
                                                                       "total_ms")),
                      fmt(r.get("cudnn_ms")) + ("*" if r.get("cudnn_extrapolated") else ""),
                      *(fmt(r.get(f"speedup_vs_{k}")) for k in ("cudnn", "flash", "flex", "flex_block_sparse")))
                     for _, r in self.measured])
        if self.skipped:
            print("skipped (time budget): " + ", ".join(x["case"] for x in self.skipped))
        if self.errors:
            print("errors: " + "; ".join(f"{e['case']}: {e['error'][:160]}" for e in self.errors))
        print(f"{len(self.rows)} rows in {time.time() - self.started:.0f} s; * = extrapolated; -> {self.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="suite-out")
    parser.add_argument("--budget-s", type=float, default=500.0, help="stop starting cases past this (seconds)")
    parser.add_argument("--parts", default=",".join(PART_ORDER), help=f"comma list, in order, from: {', '.join(PART_ORDER)}")
    parser.add_argument("--geometry", default=None, help="llama3 (default on the GPU), smollm2 (dry-run default)")
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU (TRITON_INTERPRET=1, wall-clock times): checks for crashes")
    parser.add_argument("--dry-length", type=int, default=None, help="with --dry-run: the length (default 512)")
    parser.add_argument("--no-real", action="store_true",
                        help="no SmolLM2: the synthetic parts, and the others that accept synthetic stand-ins")
    parser.add_argument("--strict", action="store_true", help="with --dry-run: stop at the first error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the parts (stderr)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [p for p in args.parts.split(",") if p]
    unknown = [p for p in names if p not in PART_ORDER]
    if unknown:
        print(f"suite: unknown parts {unknown}; choose from {', '.join(PART_ORDER)}", file=sys.stderr)
        return 2
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before sampleattn.kernels is imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("suite: no CUDA GPU (use --dry-run on the CPU)", file=sys.stderr)
        return 2
    run = SuiteRun(args)
    parts = [run.parts[name] for name in names]
    if args.no_real:
        parts = [p for p in parts if p.stand_in or not any(getattr(e, "inputs", "") == "real" or
                                                           getattr(e, "inputs", "") == "held" for e in p.entries)]
    print(f"[suite] parts {[p.name for p in parts]}, budget {args.budget_s:.0f} s, device {run.device}, "
          f"geometry {run.geometry_name}", flush=True)
    from .progress import case_bar

    bar = case_bar(len(parts), "suite parts", enabled=not args.no_progress)
    for part in parts:
        bar.set_postfix_str(part.name)
        if run.left() <= 0:
            run.skipped.append({"case": part.name, "estimate_s": None, "left_s": round(run.left(), 1)})
        else:
            print(f"[suite] part {part.name} at {time.time() - run.started:.0f} s", flush=True)
            run.guarded(part)
        bar.update()
    bar.close()
    run.save()
    run.print_tables()
    failed = [r["label"] for _, r in run.measured if r.get("check_ok") is False]
    if failed:
        print(f"own-plan check failed: {failed}")
    return 1 if failed or (args.dry_run and run.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
