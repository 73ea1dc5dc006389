"""Launch-option sweep of the plan's two stage-1 kernels, and the plan's time per stage, on a GPU.

Llama-3-8B geometry (32 query / 8 KV heads, head dim 128), bf16, structured synthetic inputs
(kernel times do not depend on the values), alpha 0.95, window 8%, sample 5%, KV-head
granularity. For each length:

* the plan as the operator runs it (``plan(reports=False)``) and with its reports, and each of
  its parts alone: sampled-row log-sum-exp, column scores, selection;
* `sampled_row_stats` over rows per program (64 or 128, from 1, 2 or 4 heads of a KV group) x
  key tile x warps x stages, each checked on 32 sampled rows of one head against fp32 torch;
* `column_scores` over the same grid, each checked against the default variant.

A variant that fails to compile or run (shared memory) is recorded with its error. The fastest
variant of each kernel is printed at the end, for the launchers' defaults.

Then (``stage3``) stage 3 on the plan at alpha 0.95 and 0.99, reading the selected columns from
their compact copy or gathering them by index, each checked against the fp32 oracle of its plan.

Run: ``python -m sampleattn.bench.plan_sweep --out DIR [--lengths 32768,131072] [--parts plan,sweep,stage3]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

from sampleattn import SampleAttentionConfig, collect_env, plan
from sampleattn.kernels import column_scores, sampled_row_stats
from sampleattn.kernels.sampling import SCORES_BLOCK_N, score_tile_ranges
from sampleattn.planning import prepare_plan, window_mass_from_scores
from sampleattn.selection import select_columns
from sampleattn.sampling import choose_sampled_rows
from sampleattn.synthetic import structured_qkv
from sampleattn.timing import cuda_ms

KERNEL_BLOCKS = (64, 128)  # column scores: sampled rows per program
TILE_ROWS = (64, 128)  # row statistics: rows per program (heads x slots)
HEADS_PER_PROGRAM = (1, 2, 4)
BLOCK_NS = (32, 64, 128)
WARPS = (4, 8)
STAGES = (2, 3)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    return float(((a - b).abs()[finite]).max() / b[finite].abs().max().clamp(min=1e-30))


def lse_oracle(q, k, rows, head, scale, n=32) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log2-domain log-sum-exp of the last ``n`` real sampled rows of query head ``head``."""
    real = torch.nonzero(rows >= 0).flatten()[-n:]
    r = rows[real].to(torch.int64)
    group = q.shape[2] // k.shape[2]
    s = q[0, r, head].float() @ k[0, :, head // group].float().T * scale * math.log2(math.e)
    pos = k.shape[1] - q.shape[1] + r
    s = s.masked_fill(torch.arange(k.shape[1], device=q.device).view(1, -1) > pos.view(-1, 1), float("-inf"))
    return real, torch.logsumexp(s * math.log(2), dim=-1) / math.log(2)


def sweep_length(seqlen: int, results: list[dict], save=lambda: None, options: bool = True) -> None:
    """Append one row per measurement to ``results``, calling ``save()`` after each; without
    ``options`` only the plan by parts (no launch-option sweep)."""
    hq, hkv, d = 32, 8, 128
    q, k, v = structured_qkv(1, seqlen, seqlen, hq, hkv, d, dtype=torch.bfloat16, device="cuda", seed=0)
    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    setup = prepare_plan(q, k, config, causal=True, scale=None, heads=None)
    scale, window, qps = setup.scale, setup.window_dev, setup.q_per_sel

    # The plan as a whole and by parts (the launchers' defaults).
    head = {"seqlen": seqlen, "what": "plan"}
    p = plan(q, k, config, reports=False)
    head["density"] = p.mean_density
    head["plan_ms"] = cuda_ms(lambda: plan(q, k, config, reports=False), repeat=9)
    head["plan_with_reports_ms"] = cuda_ms(lambda: plan(q, k, config), repeat=5)
    rows = setup.rows
    head["n_sampled"] = int((rows.rows >= 0).sum())
    lse2, _ = sampled_row_stats(q, k, rows.rows, window, scale=scale, block_s=rows.block, window_mass=False)
    head["row_stats_ms"] = cuda_ms(lambda: sampled_row_stats(q, k, rows.rows, window, scale=scale,
                                                             block_s=rows.block, window_mass=False))
    head["row_stats_with_window_mass_ms"] = cuda_ms(lambda: sampled_row_stats(q, k, rows.rows, window, scale=scale,
                                                                              block_s=rows.block))
    tiles = score_tile_ranges(rows.rows, window, seqlen_q=seqlen, seqlen_k=seqlen, block_s=rows.block,
                              block_n=SCORES_BLOCK_N)
    scores = column_scores(q, k, rows.rows, window, lse2, rows.seg_blocks, q_per_sel=qps, scale=scale,
                           block_s=rows.block, tile_ranges=tiles)
    head["column_scores_ms"] = cuda_ms(lambda: column_scores(q, k, rows.rows, window, lse2, rows.seg_blocks,
                                                             q_per_sel=qps, scale=scale, block_s=rows.block,
                                                             tile_ranges=tiles))
    n_counted = setup.n_counted_dev

    def select():
        ws = window_mass_from_scores(scores, n_counted)
        return select_columns(scores, ws, n_counted, setup.alpha_sel_dev, reach=setup.reach_dev)

    head["select_ms"] = cuda_ms(select)
    real, oracle = lse_oracle(q, k, rows.rows, 5, scale)
    head["row_stats_err_vs_fp32"] = _max_rel(lse2[0, 5, real], oracle)
    results.append(head)
    save()
    print(json.dumps(head), flush=True)
    if not options:
        return

    # Row statistics: every launch option, checked against fp32 torch. Rows come in blocks of
    # 128 slots so that every slots-per-program below divides them.
    sr = choose_sampled_rows(seqlen, seqlen, n_rows=config.sampled_rows(seqlen), min_window=setup.min_window,
                             block=config.sample_block, segment_rows=setup.segment_rows, device="cuda",
                             kernel_block=128)
    real, oracle = lse_oracle(q, k, sr.rows, 5, scale)
    for tile, hp, bn, warps, stages in itertools.product(TILE_ROWS, HEADS_PER_PROGRAM, BLOCK_NS[1:], WARPS, STAGES):
        row = {"seqlen": seqlen, "what": "row_stats", "tile_rows": tile, "heads_per_program": hp,
               "block_s": tile // hp, "block_n": bn, "warps": warps, "stages": stages}
        try:
            run = lambda: sampled_row_stats(q, k, sr.rows, window, scale=scale, block_s=tile // hp, block_n=bn,
                                            window_mass=False, heads_per_program=hp, num_warps=warps,
                                            num_stages=stages)[0]
            out = run()
            row["err_vs_fp32"] = _max_rel(out[0, 5, real], oracle)
            row["ms"] = cuda_ms(run)
        except Exception as error:  # a launch option that does not fit is recorded, not fatal
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        results.append(row)
        save()
        print(json.dumps(row), flush=True)

    # Column scores: every launch option, checked against the default's scores.
    for kb, bn, warps, stages in itertools.product(KERNEL_BLOCKS, BLOCK_NS, WARPS, STAGES):
        row = {"seqlen": seqlen, "what": "column_scores", "kernel_block": kb, "block_n": bn, "warps": warps,
               "stages": stages}
        try:
            sr = choose_sampled_rows(seqlen, seqlen, n_rows=config.sampled_rows(seqlen), min_window=setup.min_window,
                                     block=config.sample_block, segment_rows=setup.segment_rows, device="cuda",
                                     kernel_block=kb)
            lse_kb, _ = sampled_row_stats(q, k, sr.rows, window, scale=scale, block_s=kb, window_mass=False)
            tr = score_tile_ranges(sr.rows, window, seqlen_q=seqlen, seqlen_k=seqlen, block_s=kb, block_n=bn)
            run = lambda: column_scores(q, k, sr.rows, window, lse_kb, sr.seg_blocks, q_per_sel=qps, scale=scale,
                                        block_s=kb, block_n=bn, tile_ranges=tr, num_warps=warps, num_stages=stages)
            row["rel_diff_vs_default"] = _max_rel(run(), scores)
            row["ms"] = cuda_ms(run)
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        results.append(row)
        save()
        print(json.dumps(row), flush=True)


def stage3_compact(seqlen: int, results: list[dict], save=lambda: None) -> None:
    """Stage 3 reading the selected columns from their compact copy against gathering them by
    index, at alpha 0.95 and 0.99 (window 8%, sample 5%, KV-head granularity, 128x128 tiles)."""
    from sampleattn.kernels import sparse_attention_fwd
    from sampleattn.reference import attention_rows_ref, relative_error

    q, k, v = structured_qkv(1, seqlen, seqlen, 32, 8, 128, dtype=torch.bfloat16, device="cuda", seed=0)
    check_rows = torch.randperm(seqlen, generator=torch.Generator().manual_seed(0))[:64].sort().values.to(q.device)
    for alpha in (0.95, 0.99):
        config = SampleAttentionConfig(alpha=alpha, window_ratio=0.08, sample_ratio=0.05, dense_below=0,
                                       gqa_granularity="kv_head")
        p = plan(q, k, config, reports=False)
        oracle = attention_rows_ref(q, k, v, check_rows, plan=p)
        row = {"seqlen": seqlen, "what": "stage3", "alpha": alpha, "density": p.mean_density,
               "kmax": int(p.col_idx.shape[-1])}
        for compact in (False, True):
            run = lambda: sparse_attention_fwd(q, k, v, p.col_idx, p.window, segment_rows=p.segment_rows,
                                               q_per_sel=p.q_per_sel, scale=p.scale, block_m=128, block_n=128,
                                               compact=compact)[0]
            name = "compact" if compact else "gathered"
            row[f"{name}_err_vs_own_plan"] = relative_error(run()[:, check_rows], oracle)
            row[f"{name}_ms"] = cuda_ms(run)
        row["speedup"] = row["gathered_ms"] / row["compact_ms"]
        results.append(row)
        save()
        print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--lengths", default="32768,131072")
    parser.add_argument("--parts", default="plan,sweep,stage3",
                        help="plan (the plan by parts), sweep (the launch options), stage3 (compact columns)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    started = time.time()
    env = collect_env()

    def save():  # after every row: a run cut by its time limit keeps what it measured
        (out / "plan_sweep.json").write_text(json.dumps({"env": env, "results": results,
                                                          "seconds": time.time() - started}, indent=1))

    for seqlen in [int(x) for x in args.lengths.split(",")]:
        if parts & {"plan", "sweep"}:
            sweep_length(seqlen, results, save, options="sweep" in parts)
            torch.cuda.empty_cache()
        if "stage3" in parts:
            stage3_compact(seqlen, results, save)
            torch.cuda.empty_cache()
    for seqlen in sorted({r["seqlen"] for r in results}):
        for what in ("row_stats", "column_scores"):
            ok = [r for r in results if r["seqlen"] == seqlen and r["what"] == what and "ms" in r]
            for r in sorted(ok, key=lambda r: r["ms"])[:5]:
                shape = f"kb{r['kernel_block']}" if what == "column_scores" else \
                    f"tile{r['tile_rows']} hp{r['heads_per_program']}"
                print(f"{seqlen} {what}: {r['ms']:.2f} ms  {shape} bn{r['block_n']} w{r['warps']} s{r['stages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
