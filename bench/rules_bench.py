"""The selection rules side by side at one length, on the same tensors and error rows.

    python -m sampleattn.bench.rules_bench --length 128k --out results/       # on a CUDA GPU
    python -m sampleattn.bench.rules_bench --dry-run --out /tmp/x             # tiny, on the CPU

Inputs: Llama-3-8B geometry with real SmolLM2 heads of a middle and a late layer band
(`harness.smollm2_to_geometry`). For every method: the error against exact fp32 attention on
the same seeded rows (`harness.error_rows_for`), the density, the sampled rows' retained mass,
the plan's time (fast path, no reports), stage 3's, and the whole operator's, against cuDNN in
the same process (`compare.measure`, the runner `peers_bench` uses too). Methods are (name,
config) pairs (`METHODS`); `main`'s ``extra_methods`` takes further `compare.Method` or (name,
callable) pairs, timed and checked the same way. One JSON line per method and band goes to
``OUT/rules.jsonl`` as soon as it is measured (with ``config`` for the rules).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from sampleattn import SampleAttentionConfig
from sampleattn.env import collect_env
from sampleattn.lengths import parse_length
from sampleattn.rules import BlockRule

__all__ = ["METHODS", "PEERS", "build_parser", "main"]


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
    # squared shares (BlockRule.share_power=2): a block one row needs ranks by how much it needs it
    ("block b0.95 w2% rows/2 p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.95, row_stride=2, share_power=2))),
    ("block b0.97 w2% rows/2 p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.97, row_stride=2, share_power=2))),
    ("block b0.98 w2% rows/2 p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.98, row_stride=2, share_power=2))),
    ("block b0.99 w2% rows/2 p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, row_stride=2, share_power=2))),
    ("block b0.993 w2% rows/2 p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.993, row_stride=2, share_power=2))),
    ("block b0.99 w2% p2", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, share_power=2))),
    # squared shares with the paper's stripe columns, sampled from 2% of the rows
    ("block b0.98 w2% rows/2 p2 +stripes a0.9 s2%",
     _config(0.9, 0.02, 0.02, BlockRule(beta=0.98, row_stride=2, share_power=2, stripes=True))),
    ("block b0.99 w2% rows/2 p2 +stripes a0.9 s2%",
     _config(0.9, 0.02, 0.02, BlockRule(beta=0.99, row_stride=2, share_power=2, stripes=True))),
    # a few heavy stripe columns (the top 64 or 256 per KV head, from 0.5% of the rows) with the
    # blocks: the keys far above their block's mean key, which the pooled estimate misses (named
    # so that no earlier row's name is a part of theirs: the GPU scripts select rows by parts)
    ("block b0.98 rows/2 w2% +64 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.98, row_stride=2, stripes=True, max_stripes=64))),
    ("block b0.99 rows/2 w2% +64 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.99, row_stride=2, stripes=True, max_stripes=64))),
    ("block b0.993 rows/2 w2% +64 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.993, row_stride=2, stripes=True, max_stripes=64))),
    ("block b0.98 rows/2 p2 w2% +64 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.98, row_stride=2, share_power=2, stripes=True, max_stripes=64))),
    ("block b0.99 rows/2 p2 w2% +64 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.99, row_stride=2, share_power=2, stripes=True, max_stripes=64))),
    ("block b0.99 rows/2 w2% +256 stripes s0.5%",
     _config(0.99, 0.02, 0.005, BlockRule(beta=0.99, row_stride=2, stripes=True, max_stripes=256))),
    # dense attention instead of stage 3 when the plan keeps more than 70% of the pairs
    ("block b0.99 w2% rows/2 dense>0.7", _config(0.9, 0.02, 0.05, BlockRule(beta=0.99, row_stride=2),
                                                 dense_above=0.7)),
    # 1M tokens: the paper's rule at its 1M setting, the block rule at narrow windows
    ("1m sampled a0.95 w1% s1%", _config(0.95, 0.01, 0.01)),
    ("1m block b0.95 w1%", _config(0.9, 0.01, 0.01, BlockRule(beta=0.95))),
    ("1m block b0.95 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.95, row_stride=4))),
    ("1m block b0.97 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.97, row_stride=4))),
    ("1m block b0.98 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.98, row_stride=4))),
    ("1m block b0.99 w1% rows/4", _config(0.9, 0.01, 0.01, BlockRule(beta=0.99, row_stride=4))),
    ("1m block b0.98 w0.5% rows/4", _config(0.9, 0.005, 0.01, BlockRule(beta=0.98, row_stride=4))),
    ("1m block b0.99 w0.5% rows/4", _config(0.9, 0.005, 0.01, BlockRule(beta=0.99, row_stride=4))),
    ("1m block b0.97 w1% rows/4 p2", _config(0.9, 0.01, 0.01, BlockRule(beta=0.97, row_stride=4, share_power=2))),
    ("1m block b0.98 w1% rows/4 p2", _config(0.9, 0.01, 0.01, BlockRule(beta=0.98, row_stride=4, share_power=2))),
    ("1m block b0.99 w1% rows/4 p2", _config(0.9, 0.01, 0.01, BlockRule(beta=0.99, row_stride=4, share_power=2))),
    ("1m block b0.993 w1% rows/4 p2", _config(0.9, 0.01, 0.01, BlockRule(beta=0.993, row_stride=4, share_power=2))),
    ("1m block b0.98 rows/4 w1% +64 stripes s0.1%",
     _config(0.99, 0.01, 0.001, BlockRule(beta=0.98, row_stride=4, stripes=True, max_stripes=64))),
    ("1m block b0.98 p2 rows/4 w1% +64 stripes s0.1%",
     _config(0.99, 0.01, 0.001, BlockRule(beta=0.98, row_stride=4, share_power=2, stripes=True, max_stripes=64))),
]

#: Peers timed beside the rules with ``--peers`` (`sampleattn.bench.peers`: MInference's
#: vertical-slash and FlexPrefill, reimplemented), as (name, peer, preset).
PEERS = [("MInference vertical-slash, as released", "vertical_slash", "released"),
         ("MInference vertical-slash, budgets x2", "vertical_slash", "budget-x2"),
         ("FlexPrefill, defaults", "flexprefill", "default"),
         ("FlexPrefill, gamma 0.99", "flexprefill", "gamma0.99")]


def _random_qkv(geometry, seqlen: int, *, dtype, device):
    """i.i.d. standard normal q, k, v: attention without sinks, stripes or locality."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, seqlen, geometry.num_q_heads, geometry.head_dim, device=device, generator=g, dtype=dtype)
    k, v = (torch.randn(1, seqlen, geometry.num_kv_heads, geometry.head_dim, device=device, generator=g, dtype=dtype)
            for _ in range(2))
    return q, k, v


def _dense_synthetic_qkv(geometry, seqlen: int, *, dtype, device):
    """The structured generator with a quarter of the key columns as stripes: a plan that keeps
    most pairs."""
    from .harness import make_inputs

    return make_inputs(geometry, seqlen, 1, "synthetic", density=0.25, dtype=dtype, device=device)


#: Inputs without real heads, for the "never slower than dense" check.
UNSTRUCTURED = {"synthetic": _dense_synthetic_qkv, "random": _random_qkv}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.bench.rules_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="128k")
    parser.add_argument("--bands", default="mid,late",
                        help="SmolLM2 layer bands: mid (layer 14), late (24); and inputs without real heads: "
                             "synthetic (the structured generator with a quarter of the columns as stripes: a "
                             "dense plan), random (i.i.d. Gaussian q, k, v: no structure at all)")
    parser.add_argument("--methods", default="", help="comma-separated substrings of METHODS names, or whole names after '=' (default: all but the 1M settings, whose names start with '1m ')")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--error-rows", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true", help="tiny length and SmolLM2's geometry (CPU)")
    parser.add_argument("--peers", action="store_true", help="also time the peers (PEERS) on the same inputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the cases (stderr)")
    parser.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None, extra_methods: list | None = None) -> list[dict]:
    """Measure the chosen `METHODS` (then ``extra_methods``, `Method` or ``(name, callable)``
    pairs, and the peers with ``--peers``) on each band; returns the rows written."""
    args = build_parser().parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel module is imported
    import torch

    from . import harness as h
    from .compare import as_method, compare, operator_method, peer_method
    from .progress import case_bar

    bands = {"mid": 14, "late": 24}
    wanted = [b.strip() for b in args.bands.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in bands and b not in UNSTRUCTURED]
    if unknown:
        raise SystemExit(f"rules_bench: unknown bands {unknown}; choose from {', '.join([*bands, *UNSTRUCTURED])}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    seqlen = 512 if args.dry_run else parse_length(args.length)
    geometry_name = "smollm2" if args.dry_run else "llama3"
    geometry = h.GEOMETRIES[geometry_name]
    if args.methods:
        specs = [s for s in args.methods.split(",") if s]
        chosen = [(n, c) for n, c in METHODS if any(n == s[1:] if s.startswith("=") else s in n for s in specs)]
    else:
        chosen = [(n, c) for n, c in METHODS if not n.startswith("1m ")]
    if args.dry_run:  # two rules at small tiles: a check of every code path, not a measurement
        chosen = [(n, c.model_copy(update={"block_m": 64, "block_n": 32})) for n, c in chosen[:4:2]]
    methods = [operator_method(n, c) for n, c in chosen] + [as_method(m) for m in (extra_methods or [])]
    if args.peers:
        methods += [peer_method(peer, preset, name) for name, peer, preset in PEERS]
    layer_sets = {b: h.smollm2_layers_for(geometry, bands[b]) for b in wanted if b in bands}
    dtype = torch.float32 if args.dry_run else torch.bfloat16  # the interpreter gets bf16 wrong
    inputs = {}
    if layer_sets:
        captured = h.capture_smollm2(seqlen, sorted({x for s in layer_sets.values() for x in s}), device=device)
        inputs = {b: functools.partial(h.smollm2_to_geometry, captured, layer_sets[b], geometry, dtype=dtype)
                  for b in layer_sets}
    inputs.update({b: functools.partial(UNSTRUCTURED[b], geometry, seqlen, dtype=dtype, device=device)
                   for b in wanted if b in UNSTRUCTURED})
    (out_dir / "env.json").write_text(json.dumps({**collect_env(), "seqlen": seqlen, "geometry": geometry_name,
                                                  "rope_scaling": h.smollm2_rope_scaling()}, indent=1, default=str))
    configs = {n: json.loads(c.model_dump_json()) for n, c in chosen}
    rows_out: list[dict] = []
    bar = case_bar(len(wanted) * len(methods), "rules_bench", enabled=not args.no_progress)
    with open(out_dir / "rules.jsonl", "a") as log:
        def emit(row: dict) -> None:
            if row["method"] in configs:  # a rule: its configuration as `config`
                row.pop("params", None)
                row["config"] = configs[row["method"]]
            rows_out.append(row)
            log.write(json.dumps(row, default=str) + "\n")
            log.flush()
            print(_line(row), flush=True)

        compare(methods, inputs, seqlen=seqlen, error_rows=args.error_rows, repeat=1 if args.dry_run else args.repeat,
                warmup=0 if args.dry_run else 2, emit=emit, bar=bar)
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
