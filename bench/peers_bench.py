"""The peers (MInference's vertical-slash, FlexPrefill) and the operator against cuDNN, in one
process on one set of inputs.

Run on the H200::

    python -m sampleattn.bench.peers_bench --lengths 131072 --inputs smollm2 --out OUT

Inputs: Llama-3-8B's geometry (32 query / 8 KV heads, d128) with real SmolLM2 heads
(`harness.smollm2_to_geometry`) of the middle and the late layer band, captured in one prefill
(the suite's ``main128k`` bands), or ``--inputs synthetic``. For each length and band: SDPA cuDNN
timed once (`harness.dense_baselines`), exact fp32 attention of the seeded error rows
(`harness.error_rows_for`, the same rows as the suite's), then every method of the list:

1. a first call (Triton compiles included: ``first_call_s``), whose output gives ``error``
   against exact attention on those rows, and whose info gives ``density``;
2. where the method has a plan and a mask: its own-mask check (``error_vs_own_mask``: the output
   against exact attention under the method's own mask on the same rows; ``check_ok``);
3. CUDA-event medians of the whole method (``total_ms``, and ``x_cudnn``), and where it splits
   into an estimate and a kernel call, of each (``estimate_ms``, ``attention_ms``).

Methods are a list of `Method` (or plain ``(name, callable)`` pairs, the callable taking
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
import dataclasses
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

__all__ = ["Method", "as_method", "default_methods", "main", "measure", "peer_methods", "run", "sampleattn_method"]


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the row's label.
        run: ``(q, k, v) -> out or (out, info)``: the first, checked call; ``info`` may carry
            ``density`` and anything else worth recording.
        timed: what is timed as the whole method (default: ``run``); e.g. ``run`` without its
            density computation.
        plan: ``(q, k) -> plan``, the estimate alone (timed as ``estimate_ms``); with ``attend``
            ``(q, k, v, plan) -> out``, the kernel alone (``attention_ms``).
        mask_rows: ``(plan, rows, heads) -> (B, len(heads), len(rows), Sk) bool``, the plan's
            mask on some rows: enables the own-mask check.
        params: recorded with the row.
    """

    name: str
    run: Callable[..., Any]
    timed: Callable[..., Any] | None = None
    plan: Callable[..., Any] | None = None
    attend: Callable[..., Any] | None = None
    mask_rows: Callable[..., Any] | None = None
    params: dict = dataclasses.field(default_factory=dict)


def as_method(entry: Method | tuple[str, Callable]) -> Method:
    """A `Method`, or a ``(name, callable)`` pair made into one."""
    if isinstance(entry, Method):
        return entry
    name, fn = entry
    return Method(name=name, run=fn)


def _vertical_slash(preset: str) -> Method:
    from sampleattn.bench import peers
    from sampleattn.bench.peers.vertical_slash import vertical_slash_params

    return Method(
        name=f"minference vertical-slash {preset}",
        run=functools.partial(peers.vertical_slash_attention, preset=preset),
        timed=functools.partial(peers.vertical_slash_attention, preset=preset, with_density=False),
        plan=functools.partial(peers.vertical_slash_plan, preset=preset),
        attend=peers.vertical_slash_sparse,
        mask_rows=lambda p, rows, heads: p.mask_rows(rows, heads),
        params=vertical_slash_params(preset))


def _flexprefill(preset: str) -> Method:
    from sampleattn.bench import peers
    from sampleattn.bench.peers.flexprefill import flexprefill_params

    return Method(
        name=f"flexprefill {preset}",
        run=functools.partial(peers.flexprefill_attention, preset=preset),
        timed=functools.partial(peers.flexprefill_attention, preset=preset, with_density=False),
        plan=functools.partial(peers.flexprefill_plan, preset=preset),
        attend=peers.flexprefill_sparse,
        mask_rows=lambda p, rows, heads: p.mask_rows(rows, heads),
        params=flexprefill_params(preset))


def peer_methods() -> list[Method]:
    """MInference's vertical-slash at each budget preset, FlexPrefill at each preset."""
    from sampleattn.bench.peers import flexprefill, vertical_slash

    return [_vertical_slash(p) for p in vertical_slash.PRESETS] + [_flexprefill(p) for p in flexprefill.PRESETS]


def sampleattn_method(name: str, config) -> Method:
    """The operator with one `SampleAttentionConfig`: plan (without reports) then the kernel."""
    from sampleattn import plan, sample_attention, sparse_attention
    from sampleattn.reference import plan_mask_rows

    def first(q, k, v):
        p = plan(q, k, config)
        return sparse_attention(q, k, v, p), {"density": p.mean_density,
                                              "retained_min": float(p.retained_min.min())}

    masks: dict = {}

    def mask_rows(p, rows, heads):
        # plan_mask_rows builds every head at once: build it once per plan, slice per KV head.
        if masks.get("plan") is not p:
            masks.update(plan=p, mask=plan_mask_rows(p, rows))
        return masks["mask"][:, heads]

    return Method(name=name, run=first, timed=lambda q, k, v: sample_attention(q, k, v, config),
                  plan=lambda q, k: plan(q, k, config, reports=False),
                  attend=lambda q, k, v, p: sparse_attention(q, k, v, p),
                  mask_rows=mask_rows,
                  params=config.model_dump() if hasattr(config, "model_dump") else {})


def default_methods() -> list[Method]:
    """The peers, then the operator at the paper's near-lossless setting (alpha 0.95, window 8%,
    sample 5%, always sparse)."""
    from sampleattn import SampleAttentionConfig

    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    return peer_methods() + [sampleattn_method("sampleattn a0.95 w8% s5%", config)]


def _split(result) -> tuple[Any, dict]:
    return (result[0], dict(result[1])) if isinstance(result, tuple) else (result, {})


def measure(method: Method, q, k, v, *, rows, exact, cudnn_ms: float | None, repeat: int, warmup: int) -> dict:
    """Check, then time, one method on one input. Returns one JSON-able row."""
    import torch

    from sampleattn.bench.harness import device_ms
    from sampleattn.bench.peers.reference import masked_attention_rows
    from sampleattn.reference import relative_error

    device = q.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    row: dict = {"method": method.name, "params": method.params}
    started = time.perf_counter()
    out, info = _split(method.run(q, k, v))
    sync()
    row["first_call_s"] = time.perf_counter() - started
    row["error"] = relative_error(out[:, rows], exact)
    row["nan"] = bool(torch.isnan(out).any())
    row["density"] = info.pop("density", None)
    row["info"] = {key: val for key, val in info.items() if key not in method.params}
    del out
    timer = dict(warmup=warmup, repeat=repeat)
    if method.plan is not None and method.mask_rows is not None:
        p = method.plan(q, k)
        own = masked_attention_rows(q, k, v, rows, lambda r, heads: method.mask_rows(p, r, heads))
        mine = method.attend(q, k, v, p)[:, rows] if method.attend is not None else None
        if mine is not None:
            row["error_vs_own_mask"] = relative_error(mine, own)
            row["check_ok"] = bool(row["error_vs_own_mask"] < 2e-2 and not row["nan"])
        del own, mine
        row["estimate_ms"] = device_ms(lambda: method.plan(q, k), device, **timer)
        if method.attend is not None:
            row["attention_ms"] = device_ms(lambda: method.attend(q, k, v, p), device, **timer)
        del p
    timed = method.timed or method.run
    row["total_ms"] = device_ms(lambda: timed(q, k, v), device, **timer)
    row["cudnn_ms"] = cudnn_ms
    row["x_cudnn"] = cudnn_ms / row["total_ms"] if cudnn_ms else None
    if "estimate_ms" in row:
        row["estimate_share"] = row["estimate_ms"] / row["total_ms"]
    return row


def _inputs(args, geometry, seqlen: int, device: str, dtype):
    """{band: (q, k, v)}: both bands of one SmolLM2 prefill, or one synthetic input."""
    from sampleattn.bench import harness
    from sampleattn.bench.suite import GPU_SIZES

    if args.inputs == "synthetic":
        return {"synthetic": harness.make_inputs(geometry, seqlen, 1, "synthetic", device=device, dtype=dtype)}
    bands = {"mid": harness.smollm2_layers_for(geometry, GPU_SIZES.mid_layer),
             "late": harness.smollm2_layers_for(geometry, GPU_SIZES.late_layer)}
    layers = sorted({layer for band in bands.values() for layer in band})
    captured = harness.capture_smollm2(seqlen, layers, device=device)
    return {band: harness.smollm2_to_geometry(captured, band_layers, geometry, dtype=dtype)
            for band, band_layers in bands.items()}


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def run(args: argparse.Namespace, methods: list | None = None) -> int:
    """Measure ``methods`` (default: `default_methods`) at every length and band of ``args``."""
    import torch

    from sampleattn import collect_env
    from sampleattn.bench import harness
    from sampleattn.bench.progress import case_bar
    from sampleattn.reference import attention_rows_ref

    methods = [as_method(m) for m in (methods if methods is not None else default_methods())]
    if args.methods:
        wanted = [w.strip() for w in args.methods.split(",") if w.strip()]
        methods = [m for m in methods if any(w in m.name for w in wanted)]
        if not methods:
            print(f"peers_bench: no method matches {wanted}", file=sys.stderr)
            return 2
    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16  # the interpreter gets bf16 wrong
    geometry = harness.GEOMETRIES[args.geometry or ("smollm2" if args.dry_run else "llama3")]
    repeat, warmup = (1, 0) if args.dry_run else (args.repeat, args.warmup)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.jsonl").write_text("")
    started = time.time()
    rows: list[dict] = []
    notes: list[str] = []
    errors: list[dict] = []

    def save() -> None:
        report = {"env": collect_env(), "command": sys.argv, "dry_run": args.dry_run, "geometry": geometry.name,
                  "inputs": args.inputs, "seconds": time.time() - started, "notes": notes, "errors": errors,
                  "methods": [m.name for m in methods], "rows": json.loads(harness.to_json(rows))}
        tmp = out_dir / "peers.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(out_dir / "peers.json")

    print(f"[peers] {len(methods)} methods, lengths {args.lengths}, inputs {args.inputs}, geometry {geometry.name}, "
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
        error_rows = harness.error_rows_for(seqlen, min(args.error_rows, seqlen)).to(device)
        cudnn = None
        for band, (q, k, v) in inputs.items():
            if cudnn is None:  # dense attention's time does not depend on the values: once per length
                cudnn = harness.dense_baselines(q, k, v, repeat=repeat, warmup=warmup, flex=False, backends=("cudnn",))
                rows.append({"method": "sdpa cudnn", "seqlen": seqlen, "band": band, "total_ms": cudnn["cudnn"],
                             "x_cudnn": 1.0, "density": 1.0,
                             **{key: val for key, val in cudnn.items() if key != "cudnn"}})
                print(json.dumps({"method": "sdpa cudnn", "seqlen": seqlen, "ms": _fmt(cudnn["cudnn"])}), flush=True)
            exact = attention_rows_ref(q, k, v, error_rows)
            for method in methods:
                bar.set_postfix_str(f"{method.name} {band} {seqlen}")
                try:
                    row = measure(method, q, k, v, rows=error_rows, exact=exact, cudnn_ms=cudnn.get("cudnn"),
                                  repeat=repeat, warmup=warmup)
                except Exception as error:  # noqa: BLE001 - one method's failure must not stop the others
                    errors.append({"method": method.name, "seqlen": seqlen, "band": band,
                                   "error": f"{type(error).__name__}: {str(error)[:400]}",
                                   "traceback": traceback.format_exc()[-2000:]})
                    print(f"[peers] {method.name} at {seqlen} {band} failed: {type(error).__name__}: "
                          f"{str(error)[:300]}", flush=True)
                    if args.strict:
                        raise
                    continue
                finally:
                    bar.update()
                    if device == "cuda":
                        torch.cuda.empty_cache()
                row.update(seqlen=seqlen, band=band, geometry=geometry.name, inputs=args.inputs,
                           error_rows=len(error_rows), elapsed_s=round(time.time() - started, 1))
                if "substitute" in cudnn:
                    row["substitute"] = cudnn["substitute"]
                rows.append(row)
                with open(out_dir / "results.jsonl", "a") as f:
                    f.write(json.dumps(json.loads(harness.to_json([row]))[0], default=str) + "\n")
                print(json.dumps({key: _fmt(row.get(key)) for key in
                                  ("method", "band", "total_ms", "x_cudnn", "density", "error", "estimate_ms",
                                   "attention_ms", "first_call_s", "check_ok")}), flush=True)
                save()
            del q, k, v, exact
        del inputs
        if device == "cuda":
            torch.cuda.empty_cache()
    save()
    if bar is not None:
        bar.close()
    print("\n| length | band | method | ms | x cuDNN | density | error | estimate ms | attention ms | check |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seqlen']} | {r['band']} | {r['method']} | {_fmt(r.get('total_ms'))} | {_fmt(r.get('x_cudnn'))} | "
              f"{_fmt(r.get('density'))} | {_fmt(r.get('error'))} | {_fmt(r.get('estimate_ms'))} | "
              f"{_fmt(r.get('attention_ms'))} | {_fmt(r.get('check_ok'))} |")
    if errors:
        print("errors: " + "; ".join(f"{e['method']} ({e['seqlen']} {e['band']}): {e['error'][:160]}" for e in errors))
    print(f"{len(rows)} rows in {time.time() - started:.0f} s -> {out_dir}")
    failed = [r["method"] for r in rows if r.get("check_ok") is False]
    if failed:
        print(f"own-mask check failed: {failed}")
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
