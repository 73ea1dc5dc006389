"""`sattn-bench`: the operator against SDPA (cuDNN, flash) and FlexAttention on a CUDA GPU.

Example (the command behind docs/benchmarks.md's main table)::

    sattn-bench --geometries llama3 --lengths 32k,128k --alphas 0.95,0.99 --out bench-out

Writes ``OUT/bench.json`` (one row per case, with the environment) and, with ``--plot``,
``OUT/speedup.png`` and ``OUT/stages.png``; prints a table last. Exit status: 0 when every case's
own check passed, 1 when one failed, 2 for bad arguments or no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sampleattn.lengths import format_length, parse_lengths


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sattn-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--geometries", default="llama3", help="comma list of llama3, chatglm2, smollm2")
    parser.add_argument("--lengths", default="32k,128k", help="e.g. 8k,32k,128k,1m")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--inputs", default="synthetic", help="synthetic, or smollm2-layerN (real q/k/v)")
    parser.add_argument("--density", type=float, default=0.01, help="stripe density knob of the synthetic inputs")
    parser.add_argument("--alphas", type=_floats, default=[0.95])
    parser.add_argument("--windows", type=_floats, default=[0.08], help="window ratios")
    parser.add_argument("--samples", type=_floats, default=[0.05], help="sample ratios")
    parser.add_argument("--granularity", default="kv_head", choices=["kv_head", "query_head"])
    parser.add_argument("--selection", default=None,
                        help="SampleAttentionConfig.selection (e.g. sampled, rescored); default: the config's")
    parser.add_argument("--candidate-alpha", type=float, default=None, help="SampleAttentionConfig.candidate_alpha")
    parser.add_argument("--rescore-stride", type=int, default=None, help="SampleAttentionConfig.rescore_stride")
    parser.add_argument("--full-density", action="store_true", help="also time alpha=1, window=1 (kernel efficiency)")
    parser.add_argument("--no-flex", action="store_true", help="skip the FlexAttention baselines")
    parser.add_argument("--baseline-max", default="256k", help="no dense baselines above this length")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--memory", action="store_true", help="measure extra device memory per case")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the cases (stderr)")
    parser.add_argument("--out", default="bench-out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from sampleattn import collect_env

    from .harness import GEOMETRIES, Case, dense_baselines, extra_memory_gib, make_inputs, run_case, to_json

    if not torch.cuda.is_available():
        print("sattn-bench: no CUDA GPU; the benchmark times GPU kernels", file=sys.stderr)
        return 2
    try:
        lengths = parse_lengths(args.lengths)
        baseline_max = parse_lengths(args.baseline_max)[0]
        geometries = {name: GEOMETRIES[name] for name in args.geometries.split(",")}
    except (ValueError, KeyError) as error:
        print(f"sattn-bench: {error}; geometries are {', '.join(GEOMETRIES)}", file=sys.stderr)
        return 2
    options = tuple((name, value) for name, value in (("selection", args.selection),
                                                      ("candidate_alpha", args.candidate_alpha),
                                                      ("rescore_stride", args.rescore_stride)) if value is not None)
    try:
        Case("llama3", 1, 1, args.inputs, 0.95, 0.08, 0.05, options=options).config()
    except Exception as error:  # a field this version of the config lacks, or a bad value
        print(f"sattn-bench: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.time()
    configs = [(a, w, s) for a in args.alphas for w in args.windows for s in args.samples]
    if args.full_density:
        configs.append((1.0, 1.0, args.samples[0]))
    from .progress import case_bar

    bar = case_bar(len(geometries) * len(lengths) * len(configs), "sattn-bench", enabled=not args.no_progress)
    for name, geometry in geometries.items():
        for seqlen in lengths:
            q, k, v = make_inputs(geometry, seqlen, args.batch, args.inputs, density=args.density)
            baselines = {}
            if seqlen <= baseline_max:
                repeat = args.repeat if seqlen <= 131072 else 2
                baselines = dense_baselines(q, k, v, repeat=repeat, flex=not args.no_flex)
            for alpha, window, sample in configs:
                case = Case(name, seqlen, args.batch, args.inputs, alpha, window, sample, args.granularity,
                            options=options)
                bar.set_postfix_str(f"{name} {seqlen} a{alpha:g} w{window:g} s{sample:g}")
                row = run_case(case, q, k, v, baselines, error_rows=args.error_rows,
                               repeat=args.repeat if seqlen <= 262144 else 3, flex_sparse=not args.no_flex)
                bar.update()
                if args.memory:
                    row["extra_memory_gib"], row["extra_memory_vs_inputs"] = extra_memory_gib(q, k, v, case.config())
                rows.append(row)
                print(json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in row.items()}),
                      flush=True)
                (out_dir / "bench.json").write_text(
                    json.dumps({"env": collect_env(), "command": sys.argv, "seconds": time.time() - started,
                                "rows": json.loads(to_json(rows))}, indent=1))
            del q, k, v
            torch.cuda.empty_cache()
    bar.close()
    if args.plot:
        from .plots import plot_results

        plot_results(rows, out_dir)
    print_table(rows)
    return 0 if all(r["check_ok"] for r in rows) else 1


def print_table(rows: list[dict]) -> None:
    from sampleattn.tables import print_table as print_rows

    def f(r, key, fmt="{:.2f}"):
        value = r.get(key)
        return fmt.format(value) if isinstance(value, float) else "-"

    print_rows(None, ("geom", "len", "alpha", "win", "smp", "density", "error", "plan ms", "attn ms", "total ms",
                      "cuDNN ms", "x cuDNN", "x flash", "attn TF/s"),
               [(r["geometry"], format_length(r["seqlen"]), f"{r['alpha']:.3g}", f"{r['window_ratio']:.3g}",
                 f"{r['sample_ratio']:.3g}", f(r, "density", "{:.3f}"), f(r, "error", "{:.4f}"), f(r, "plan_ms"),
                 f(r, "attention_ms"), f(r, "total_ms"), f(r, "cudnn_ms"), f(r, "speedup_vs_cudnn"),
                 f(r, "speedup_vs_flash"), f(r, "attention_tflops", "{:.0f}")) for r in rows])

if __name__ == "__main__":
    sys.exit(main())
