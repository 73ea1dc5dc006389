"""``sattn-eval`` (also ``python -m sampleattn.eval``): run the accuracy evaluation, or merge runs
into one report.

Examples::

    # the CPU small form (what CI can afford)
    sattn-eval run --form small --out eval-out/cpu-small

    # the full form on a GPU (bf16, Triton kernels)
    sattn-eval run --form full --device cuda --dtype bfloat16 --out eval-out/gpu

    # merge several runs (e.g. lengths run as separate commands) into one table and plots
    sattn-eval report eval-out/gpu-* --out eval-out/gpu-all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_START = time.time()  # the budget (--budget-s) counts from here: imports included

FORMS = {
    # lengths, samples, needle lengths, depths
    "small": ([2048], 1, [1024, 2048], [0.0, 0.5, 1.0]),
    "full": ([2048, 4096, 8192, 16384, 32768], 3, [1024, 2048, 4096, 8192],
             [i / 10 for i in range(11)]),
}


def _ints(text: str) -> list[int]:
    from sampleattn.lengths import parse_length

    return [parse_length(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sattn-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the evaluation and write table.md, JSON and plots")
    run.add_argument("--form", choices=sorted(FORMS), default="small",
                     help="preset of lengths, samples, needle lengths and depths (each overridable)")
    run.add_argument("--model", default="smollm2-135m", help="catalogue name (default smollm2-135m)")
    run.add_argument("--model-path", default=None, help="local model folder or .gguf file")
    run.add_argument("--lengths", type=_ints, help="fidelity lengths, e.g. 2k,4k,8k")
    run.add_argument("--samples", type=int, help="essay windows per fidelity length")
    run.add_argument("--needle-lengths", type=_ints, help="needle prompt lengths, e.g. 1k,2k")
    run.add_argument("--depths", type=_floats, help="needle depths in [0, 1], e.g. 0,0.5,1")
    run.add_argument("--alphas", type=_floats, default=[0.8, 0.9, 0.95])
    run.add_argument("--window-ratio", type=float, default=0.08)
    run.add_argument("--sample-ratio", type=float, default=0.05)
    run.add_argument("--baselines", default="window,streamingllm,bigbird,vertical_slash",
                     help="comma-separated baselines ('' for none)")
    run.add_argument("--match-alphas", type=_floats, default=None,
                     help="alphas whose densities the baselines match (default: every alpha)")
    run.add_argument("--oracle-alphas", type=_floats, default=[0.95, 0.99])
    run.add_argument("--rescored-alphas", type=_floats, default=[0.9, 0.95],
                     help="alphas of the operator's re-scored selection rows ('' for none)")
    run.add_argument("--candidate-alpha", type=float, default=0.999,
                     help="stage A's alpha of the re-scored selection (default 0.999)")
    run.add_argument("--rescore-stride", type=int, default=1,
                     help="one query block in every N ranks the candidates (default 1: every row)")
    run.add_argument("--block-betas", type=_floats, default=[],
                     help="beta of each block-rule row (sampleattn.rules.BlockRule), e.g. 0.95,0.99 ('' for none)")
    run.add_argument("--block-window-ratio", type=float, default=0.02, help="the block rule's window ratio")
    run.add_argument("--block-row-stride", type=int, default=1, help="the block rule's row_stride")
    run.add_argument("--block-share-power", type=int, default=1, help="the block rule's share_power")
    run.add_argument("--block-size", type=int, default=128,
                     help="the block rule's key block and query block (block_m), a power of two from 16 to 128")
    run.add_argument("--block-stripes-alpha", type=float, default=None,
                     help="the block rule keeps the paper's stripe columns too, chosen at this alpha "
                          "(with --sample-ratio); default: no stripes")
    run.add_argument("--block-max-stripes", type=int, default=None,
                     help="with --block-stripes-alpha: keep at most this many stripe columns per head "
                          "(a few heavy columns); default: as many as the alpha takes")
    run.add_argument("--estimator", action="store_true",
                     help="also the prototypes of sampleattn.eval.estimator (pooled, rescored_proto)")
    run.add_argument("--profile", "--profile-store", dest="profile", default=None,
                     help="profile store (URL or path): adds the 'tuned' row, the store's profile per length")
    run.add_argument("--allow-synthetic", action="store_true",
                     help="accept a profile tuned on synthetic calibration data for the 'tuned' row")
    run.add_argument("--budget-s", type=float, default=None,
                     help="start no method expected to end past this many seconds (from the process "
                          "start); what was not run is listed in results.json's meta")
    run.add_argument("--secondary-depths", type=_floats, default=None,
                     help="needle depths for every method but full and SampleAttention at the primary "
                          "alpha (default: all --depths)")
    run.add_argument("--primary-alpha", type=float, default=0.95,
                     help="the alpha run first, with full attention, on every input (default 0.95)")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    run.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"])
    run.add_argument("--tasks", default="fidelity,needle", help="fidelity, needle, or both")
    run.add_argument("--max-mask-length", type=int, default=8192,
                     help="longest input for the dense-mask methods (vertical-slash, oracle)")
    run.add_argument("--needle-methods", default=None,
                     help="families run on the needle task, e.g. full,sample_attention,window (default all)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--out", required=True, help="output folder")
    rep = sub.add_parser("report", help="merge results.json files into one table and plots")
    rep.add_argument("inputs", nargs="+", help="results.json files or folders holding one")
    rep.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.block_max_stripes is not None and args.block_stripes_alpha is None:
        parser.error("--block-max-stripes limits the block rule's stripe columns: give --block-stripes-alpha too")
    if args.command == "run" and not args.alphas:
        parser.error("--alphas needs at least one alpha: the paper's rule is the reference row, and the "
                     "baselines are matched to its density")
    from .report import load_results, merge_results, write_outputs

    if args.command == "report":
        merged = merge_results([load_results(p) for p in args.inputs])
        write_outputs(merged, args.out)
        print((__import__("pathlib").Path(args.out) / "table.md").read_text())
        return 0
    from .runner import EvalSettings, run_eval

    lengths, samples, needle_lengths, depths = FORMS[args.form]
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    settings = EvalSettings(
        model=args.model, model_path=args.model_path, lengths=args.lengths or lengths,
        samples=args.samples or samples, needle_lengths=args.needle_lengths or needle_lengths,
        depths=args.depths if args.depths is not None else depths, alphas=args.alphas,
        window_ratio=args.window_ratio, sample_ratio=args.sample_ratio,
        baselines=[b for b in args.baselines.split(",") if b], match_alphas=args.match_alphas,
        oracle_alphas=args.oracle_alphas, rescored_alphas=args.rescored_alphas,
        candidate_alpha=args.candidate_alpha, rescore_stride=args.rescore_stride, estimator=args.estimator,
        block_betas=args.block_betas, block_window_ratio=args.block_window_ratio,
        block_row_stride=args.block_row_stride, block_share_power=args.block_share_power,
        block_size=args.block_size, block_stripes_alpha=args.block_stripes_alpha,
        block_max_stripes=args.block_max_stripes,
        profile=args.profile, allow_synthetic=args.allow_synthetic, budget_s=args.budget_s,
        secondary_depths=args.secondary_depths, primary_alpha=args.primary_alpha,
        device=args.device, dtype=dtype, backend=args.backend, seed=args.seed,
        max_mask_length=args.max_mask_length, tasks=[t for t in args.tasks.split(",") if t],
        needle_methods=args.needle_methods.split(",") if args.needle_methods else None,
    )
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save_partial(partial) -> None:  # a run cut off (time limit) keeps its rows
        (out / "results.partial.json").write_text(json.dumps(partial.to_dict(), default=str))

    result = run_eval(settings, log=lambda m: print(m, flush=True), on_row=save_partial, start=_START,
                      progress=not args.no_progress)
    result.meta["seconds"] = round(time.time() - t0, 1)
    result.meta["command"] = "sattn-eval " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = write_outputs(result.to_dict(), args.out)
    (out / "results.partial.json").unlink(missing_ok=True)
    print()
    print((__import__("pathlib").Path(args.out) / "table.md").read_text())
    print(json.dumps({"seconds": result.meta["seconds"], "out": args.out,
                      "methods": len({r['method'] for r in summary['fidelity']})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
