"""The peers (MInference's vertical-slash, FlexPrefill) and the operator against cuDNN, in one
process on one set of inputs.

Run on the H200::

    python -m sampleattn.bench.peers_bench --lengths 131072 --inputs smollm2 --out OUT

Inputs: Llama-3-8B's geometry (32 query / 8 KV heads, d128) with real SmolLM2 heads
(`harness.smollm2_to_geometry`) of the middle and the late layer band, captured in one prefill
(the suite's ``main128k`` bands), or ``--inputs synthetic``. For each length and band: SDPA cuDNN
timed once (`harness.dense_baselines`), exact fp32 attention of the seeded error rows
(`harness.error_rows_for`, the same rows as the suite's), then every method of the list, checked
and timed by `compare.measure` (the runner `rules_bench` uses too; its docstring lists the row's
fields: ``error``, ``error_vs_own_plan`` and ``check_ok``, ``plan_ms``, ``attention_ms``,
``total_ms``, ``speedup_vs_cudnn``, ...).

Methods are a list of `compare.Method` (or plain ``(name, callable)`` pairs, the callable taking
``(q, k, v)`` and returning ``out`` or ``(out, info)``); `default_methods` is the peers at their
defaults and named presets plus the operator at the paper's setting. Add more with
``run(args, methods=default_methods() + [...])``.

Rows go to ``OUT/results.jsonl`` as they finish and to ``OUT/peers.json`` (rows, environment,
notes); a table is printed last. ``--dry-run``: the CPU, TRITON_INTERPRET=1, fp32, SmolLM2's own
geometry, 512 tokens unless ``--lengths`` says otherwise (FlexPrefill runs dense up to 1024
tokens; ``--lengths 1100`` takes its sparse path; the interpreter needs minutes at 2K), one
repeat without warm-up, PyTorch's default SDPA in place of cuDNN (``substitute`` says so): a
check of every code path, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .compare import Method, as_method, measure, operator_method, peer_methods

__all__ = ["Method", "as_method", "default_methods", "main", "measure", "peer_methods", "run"]


def default_methods() -> list[Method]:
    """The peers, then the operator at the paper's near-lossless setting (alpha 0.95, window 8%,
    sample 5%, always sparse)."""
    from sampleattn import SampleAttentionConfig

    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    return peer_methods() + [operator_method("sampleattn a0.95 w8% s5%", config)]


def _inputs(args, geometry, seqlen: int, device: str, dtype) -> dict[str, tuple]:
    """{band: (q, k, v)}: both bands of one SmolLM2 prefill, or one synthetic input."""
    from sampleattn.bench import harness
    from sampleattn.bench.suite_cases import GPU_SIZES

    if args.inputs == "synthetic":
        return {"synthetic": harness.make_inputs(geometry, seqlen, 1, "synthetic", device=device, dtype=dtype)}
    bands = {"mid": harness.smollm2_layers_for(geometry, GPU_SIZES.mid_layer),
             "late": harness.smollm2_layers_for(geometry, GPU_SIZES.late_layer)}
    layers = sorted({layer for band in bands.values() for layer in band})
    captured = harness.capture_smollm2(seqlen, layers, device=device)
    return {band: harness.smollm2_to_geometry(captured, band_layers, geometry, dtype=dtype)
            for band, band_layers in bands.items()}


def run(args: argparse.Namespace, methods: list | None = None) -> int:
    """Measure ``methods`` (default: `default_methods`) at every length and band of ``args``."""
    import torch

    from sampleattn import collect_env
    from sampleattn.bench import harness
    from sampleattn.bench.compare import compare
    from sampleattn.bench.progress import case_bar
    from sampleattn.bench.suite_targets import fmt
    from sampleattn.tables import print_table

    methods = [as_method(m) for m in (methods if methods is not None else default_methods())]
    if args.methods:
        wanted = [w.strip() for w in args.methods.split(",") if w.strip()]
        methods = [m for m in methods if any(w in m.name for w in wanted)]
        if not methods:
            print(f"peers_bench: no method matches {wanted}", file=sys.stderr)
            return 2
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16  # the interpreter gets bf16 wrong
    geometry_name = args.geometry or ("smollm2" if args.dry_run else "llama3")
    geometry = harness.GEOMETRIES[geometry_name]
    repeat, warmup = (1, 0) if args.dry_run else (args.repeat, args.warmup)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.jsonl").write_text("")
    started = time.time()
    rows: list[dict] = []
    notes: list[str] = []
    errors: list[dict] = []

    def save() -> None:
        report = {"env": collect_env(), "command": sys.argv, "dry_run": args.dry_run, "geometry": geometry_name,
                  "inputs": args.inputs, "seconds": time.time() - started, "notes": notes, "errors": errors,
                  "methods": [m.name for m in methods], "rows": json.loads(harness.to_json(rows))}
        tmp = out_dir / "peers.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(out_dir / "peers.json")

    def emit(row: dict) -> None:
        if "failed" in row:  # in `errors`, not a row of the table
            print(f"[peers] {row['method']} at {row['seqlen']} {row['band']} failed: {row['failed']}", flush=True)
            return
        row.update(geometry=geometry_name, inputs=args.inputs, elapsed_s=round(time.time() - started, 1))
        rows.append(row)
        with open(out_dir / "results.jsonl", "a") as f:
            f.write(json.dumps(json.loads(harness.to_json([row]))[0], default=str) + "\n")
        print(json.dumps({key: fmt(row.get(key)) if key not in ("method", "band") else row.get(key) for key in
                          ("method", "band", "total_ms", "speedup_vs_cudnn", "density", "error", "plan_ms",
                           "attention_ms", "first_call_s", "check_ok")}), flush=True)
        save()

    print(f"[peers] {len(methods)} methods, lengths {args.lengths}, inputs {args.inputs}, geometry {geometry_name}, "
          f"device {device}", flush=True)
    bar = None
    for seqlen in args.lengths:
        t0 = time.time()
        inputs = _inputs(args, geometry, seqlen, device, dtype)
        if bar is None:  # every length has as many bands as the first
            bar = case_bar(len(args.lengths) * len(inputs) * len(methods), "peers_bench", enabled=not args.no_progress)
        if device == "cuda":
            torch.cuda.synchronize()
        notes.append(f"{seqlen} tokens, {args.inputs} inputs {sorted(inputs)}: built in {time.time() - t0:.1f} s"
                     + (f", RoPE scaling {harness.smollm2_rope_scaling()}" if args.inputs == "smollm2" else ""))
        errors += compare(methods, inputs, seqlen=seqlen, error_rows=args.error_rows, repeat=repeat, warmup=warmup,
                          emit=emit, bar=bar, strict=args.strict)
        del inputs
        if device == "cuda":
            torch.cuda.empty_cache()
    save()
    if bar is not None:
        bar.close()
    print_table(None, ("length", "band", "method", "ms", "x cuDNN", "density", "error", "plan ms", "attention ms",
                       "check"),
                [(r["seqlen"], r["band"], r["method"], *(fmt(r.get(k)) for k in ("total_ms", "speedup_vs_cudnn",
                                                                                  "density", "error", "plan_ms",
                                                                                  "attention_ms")),
                  "-" if r.get("check_ok") is None else r["check_ok"]) for r in rows])
    if errors:
        print("errors: " + "; ".join(f"{e['method']} ({e['seqlen']} {e['band']}): {e['error'][:160]}" for e in errors))
    print(f"{len(rows)} rows in {time.time() - started:.0f} s -> {out_dir}")
    failed = [r["method"] for r in rows if r.get("check_ok") is False]
    if failed:
        print(f"own-plan check failed: {failed}")
    return 1 if failed or errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.peers_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="comma list of lengths (default 131072; 512 with --dry-run)")
    parser.add_argument("--inputs", choices=("smollm2", "synthetic"), default="smollm2")
    parser.add_argument("--geometry", default=None, help="llama3 (default), chatglm2, smollm2 (dry-run default)")
    parser.add_argument("--methods", default=None, help="comma list of substrings: only the methods whose name has one")
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (stderr)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="peers-out")
    parser.add_argument("--dry-run", action="store_true", help="the CPU, TRITON_INTERPRET=1, tiny sizes: crash check")
    parser.add_argument("--strict", action="store_true", help="stop at the first failing method")
    return parser


def main(argv: list[str] | None = None, methods: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lengths is None:
        args.lengths = [512] if args.dry_run else [131072]
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel module is imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("peers_bench: no CUDA GPU (use --dry-run on the CPU)", file=sys.stderr)
        return 2
    return run(args, methods)


if __name__ == "__main__":
    sys.exit(main())
