"""The selection rules side by side at one length, on the same tensors and error rows.

    python -m sampleattn.bench.rules_bench --length 128k --out results/       # on a CUDA GPU
    python -m sampleattn.bench.rules_bench --dry-run --out /tmp/x             # tiny, on the CPU

Inputs: Llama-3-8B geometry with real SmolLM2 heads of a middle and a late layer band
(`harness.smollm2_to_geometry`). For every method: the error against exact fp32 attention on
the same seeded rows (`harness.error_rows_for`), the density, the sampled rows' retained mass,
the plan's time (fast path, no reports), stage 3's, and the whole operator's, against cuDNN in
the same process. Methods are (name, config) pairs (`METHODS`); `extra_methods` takes further
(name, callable) pairs, e.g. peers, timed and checked the same way. One JSON line per method
goes to ``OUT/rules.jsonl`` as soon as it is measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Callable

import torch

from sampleattn import SampleAttentionConfig, plan, sample_attention, sparse_attention
from sampleattn.env import collect_env
from sampleattn.lengths import parse_length
from sampleattn.reference import attention_rows_ref, relative_error
from sampleattn.rules import BlockRule

from . import harness as h
from .progress import case_bar

__all__ = ["METHODS", "main", "measure_config", "measure_callable"]


def _config(alpha, window, sample, rule=None, **kw) -> SampleAttentionConfig:
    return SampleAttentionConfig(alpha=alpha, window_ratio=window, sample_ratio=sample, gqa_granularity="kv_head",
                                 dense_below=0, **({"selection": rule} if rule else {}), **kw)


#: The methods of the comparison (the paper's rule first: the reference of the method). Names
#: that start with "1m " are the 1M-token settings, run only when ``--methods`` names them.
METHODS: list[tuple[str, SampleAttentionConfig]] = [
    ("sampled a0.95 w8% s5%", _config(0.95, 0.08, 0.05)),
    ("sampled a0.99 w8% s5%", _config(0.99, 0.08, 0.05)),
    ("block b0.98 a0.9 w8% s5%", _config(0.9, 0.08, 0.05, BlockRule(beta=0.98, stripes=True))),
    ("block b0.95 nostripes w4%", _config(0.9, 0.04, 0.05, BlockRule(beta=0.95))),
    ("block b0.97 nostripes w2%", _config(0.9, 0.02, 0.05, BlockRule(beta=0.97))),
    ("block b0.98 nostripes w2%", _config(0.9, 0.02, 0.05, BlockRule(beta=0.98))),
    ("block b0.99 nostripes w2%", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99))),
    ("block b0.993 nostripes w4%", _config(0.9, 0.04, 0.05, BlockRule(beta=0.993))),
    # the estimate on one row in two or four
    ("block b0.97 w2% rows/2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.97, row_stride=2))),
    ("block b0.98 w2% rows/2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.98, row_stride=2))),
    ("block b0.99 w2% rows/2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, row_stride=2))),
    ("block b0.993 w2% rows/2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.993, row_stride=2))),
    ("block b0.98 w2% rows/4", _config(0.9, 0.02, 0.05, BlockRule(beta=0.98, row_stride=4))),
    ("block b0.99 w2% rows/4", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, row_stride=4))),
    ("block b0.98 w1% rows/2", _config(0.9, 0.01, 0.05, BlockRule(beta=0.98, row_stride=2))),
    ("block b0.99 w1% rows/2", _config(0.9, 0.01, 0.05, BlockRule(beta=0.99, row_stride=2))),
    ("block b0.99 w2% rows/2 kb64", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, row_stride=2, key_block=64))),
    # 1M tokens: the paper's rule at its 1M setting, the block rule at narrow windows
    ("1m sampled a0.95 w1% s1%", _config(0.95, 0.01, 0.01)),
    ("1m block b0.95 w1%", _config(0.9, 0.01, 0.01, BlockRule(beta=0.95))),
    ("1m block b0.95 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.95, row_stride=4))),
    ("1m block b0.97 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.97, row_stride=4))),
    ("1m block b0.98 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.98, row_stride=4))),
    ("1m block b0.99 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.99, row_stride=4))),
    ("1m block b0.98 w0.5% rows/4", _config(0.9, 0.005, 0.01, BlockRule(beta=0.98, row_stride=4))),
    ("1m block b0.99 w0.5% rows/4", _config(0.9, 0.005, 0.01, BlockRule(beta=0.99, row_stride=4))),
]

#: Peers timed beside the rules with ``--peers`` (`sampleattn.bench.peers`: MInference's
#: vertical-slash and FlexPrefill, reimplemented), as (name, module function, preset).
PEERS = [("MInference vertical-slash, as released", "vertical_slash_attention", "released"),
         ("MInference vertical-slash, budgets x2", "vertical_slash_attention", "budget-x2"),
         ("FlexPrefill, defaults", "flexprefill_attention", "default"),
         ("FlexPrefill, gamma 0.99", "flexprefill_attention", "gamma0.99")]


def peer_methods() -> list[tuple[str, Callable]]:
    """`PEERS` as ``(name, fn(q, k, v, timed) -> (out, info))``: timed calls skip the density."""
    from . import peers

    def method(function: str, preset: str) -> Callable:
        fn = getattr(peers, function)
        return lambda q, k, v, timed=False: fn(q, k, v, preset=preset, with_density=not timed)

    return [(name, method(function, preset)) for name, function, preset in PEERS]


def _time(fn, device, repeat):
    return h.device_ms(fn, device, warmup=2, repeat=repeat)


def measure_config(name: str, config: SampleAttentionConfig, q, k, v, rows, exact, cudnn_ms, *, repeat: int) -> dict:
    """Check, then time, one config of the operator (see the module docstring)."""
    device = q.device
    started = time.perf_counter()
    p = plan(q, k, config)
    out = sparse_attention(q, k, v, p)
    h._sync(device)
    row = {"method": name, "config": json.loads(config.model_dump_json()), "first_call_s": time.perf_counter() - started,
           "error": relative_error(out[:, rows], exact),
           "error_vs_own_plan": relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p)),
           "density": p.mean_density, "retained_mean": float(p.retained_mean.mean()),
           "retained_min": float(p.retained_min.min()), "estimate_cost": p.estimate_cost,
           "nan": bool(torch.isnan(out).any())}
    if p.blocks is not None:
        row["key_blocks_mean"] = float(p.blocks.blk_count.float().mean())
    row["columns_mean"] = float(p.n_selected.float().mean())
    del out
    row["plan_ms"] = _time(lambda: plan(q, k, config, reports=False), device, repeat)
    fast = plan(q, k, config, reports=False)
    row["attention_ms"] = _time(lambda: sparse_attention(q, k, v, fast), device, repeat)
    row["total_ms"] = _time(lambda: sample_attention(q, k, v, config), device, repeat)
    row["plan_share"] = row["plan_ms"] / row["total_ms"]
    row["speedup_vs_cudnn"] = cudnn_ms / row["total_ms"] if cudnn_ms else None
    del p, fast
    return row


def measure_callable(name: str, fn: Callable, q, k, v, rows, exact, cudnn_ms, *, repeat: int) -> dict:
    """Check, then time, a method given as ``fn(q, k, v, timed) -> out`` or ``-> (out, info)``
    (``timed=True`` for the timed calls: no reports)."""
    device = q.device
    started = time.perf_counter()
    result = fn(q, k, v)
    out, info = result if isinstance(result, tuple) else (result, {})
    h._sync(device)
    row = {"method": name, "first_call_s": time.perf_counter() - started, "error": relative_error(out[:, rows], exact),
           "nan": bool(torch.isnan(out).any()), **{k_: v_ for k_, v_ in info.items() if isinstance(v_, (int, float, str))}}
    del out
    row["total_ms"] = _time(lambda: fn(q, k, v, timed=True), device, repeat)
    row["speedup_vs_cudnn"] = cudnn_ms / row["total_ms"] if cudnn_ms else None
    return row


def main(argv: list[str] | None = None, extra_methods: list[tuple[str, Callable]] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="128k")
    parser.add_argument("--bands", default="mid,late", help="SmolLM2 layer bands: mid (layer 14), late (24)")
    parser.add_argument("--methods", default="", help="comma-separated substrings of METHODS names (default: all but the 1M settings, whose names start with '1m ')")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true", help="tiny length and SmolLM2's geometry (CPU)")
    parser.add_argument("--peers", action="store_true", help="also time the peers (PEERS) on the same inputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the cases (stderr)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seqlen = 512 if args.dry_run else parse_length(args.length)
    geometry = h.GEOMETRIES["smollm2" if args.dry_run else "llama3"]
    bands = {"mid": 14, "late": 24}
    wanted = [b.strip() for b in args.bands.split(",") if b.strip()]
    if args.methods:
        methods = [(n, c) for n, c in METHODS if any(s in n for s in args.methods.split(","))]
    else:
        methods = [(n, c) for n, c in METHODS if not n.startswith("1m ")]
    if args.dry_run:
        methods = [(n, c.model_copy(update={"block_m": 64, "block_n": 32})) for n, c in methods[:4:2]]
    if args.peers:
        extra_methods = list(extra_methods or []) + peer_methods()
    layer_sets = {b: h.smollm2_layers_for(geometry, bands[b]) for b in wanted}
    captured = h.capture_smollm2(seqlen, sorted({x for s in layer_sets.values() for x in s}), device=device)
    (out_dir / "env.json").write_text(json.dumps({**collect_env(), "seqlen": seqlen, "geometry": geometry.name,
                                                  "rope_scaling": h.smollm2_rope_scaling()}, indent=1, default=str))
    rows_out: list[dict] = []
    items = [(n, c, measure_config) for n, c in methods] + [(n, f, measure_callable) for n, f in (extra_methods or [])]
    bar = case_bar(len(wanted) * len(items), "rules_bench", enabled=not args.no_progress)
    with open(out_dir / "rules.jsonl", "a") as log:
        for band in wanted:
            q, k, v = h.smollm2_to_geometry(captured, layer_sets[band], geometry)
            if args.dry_run:
                q, k, v = (t.float() for t in (q, k, v))
            rows = h.error_rows_for(seqlen, min(args.error_rows, seqlen)).to(device)
            exact = attention_rows_ref(q, k, v, rows)
            base = h.dense_baselines(q, k, v, repeat=args.repeat, flex=False, backends=("cudnn",))
            cudnn = base.get("cudnn")
            record = {"band": band, "seqlen": seqlen, "method": "cuDNN SDPA (dense)", "total_ms": cudnn,
                      "speedup_vs_cudnn": 1.0, "density": 1.0}
            for name, what, measure in items:
                bar.set_postfix_str(f"{name} {band}")
                try:
                    row = measure(name, what, q, k, v, rows, exact, cudnn, repeat=args.repeat)
                except Exception as error:  # one failing method must not lose the others' rows
                    row = {"method": name, "failed": f"{type(error).__name__}: {str(error)[:300]}"}
                row.update(band=band, seqlen=seqlen)
                bar.update()
                rows_out.append(row)
                log.write(json.dumps(row, default=str) + "\n")
                log.flush()
                print(_line(row), flush=True)
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows_out.append(record)
            log.write(json.dumps(record) + "\n")
            print(_line(record), flush=True)
            del q, k, v, exact
    bar.close()
    return rows_out


def _line(row: dict) -> str:
    if "failed" in row:
        return f"{row.get('band', '')} {row['method']}: FAILED {row['failed']}"
    fmt = lambda key, spec: (format(row[key], spec) if isinstance(row.get(key), (int, float)) else "-")
    return (f"{row.get('band', '')} {row['method']:<36} total {fmt('total_ms', '.2f')} ms  "
            f"x{fmt('speedup_vs_cudnn', '.2f')}  err {fmt('error', '.4f')}  dens {fmt('density', '.3f')}  "
            f"plan {fmt('plan_ms', '.2f')}  attn {fmt('attention_ms', '.2f')}  blocks {fmt('key_blocks_mean', '.1f')}")


if __name__ == "__main__":
    main()
