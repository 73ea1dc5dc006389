"""Tile-size sweep of the stage-3 kernel, and a per-pass breakdown of the plan, on a CUDA GPU.

For each (BLOCK_M, BLOCK_N, num_warps, num_stages) it checks the output against the fp32
oracle on 128 rows (bf16 tolerance), then times stage 3 at full density (window = seqlen_k,
so every causal pair is computed: the kernel's efficiency) and at the default config's plan,
against SDPA cuDNN. Then it times each pass of the plan. Geometry: Llama-3-8B (32/8, d128), bf16.

Run: ``python -m sampleattn.bench.tile_sweep --out DIR [--lengths 32768,131072]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sampleattn.tables import print_table
from sampleattn.timing import cuda_ms

from sampleattn import SampleAttentionConfig, collect_env, plan
from sampleattn.kernels import column_scores, sampled_row_stats, sparse_attention_fwd, stripe_mass
from sampleattn.planning import (
    head_parameters, reach_per_segment, segment_rows_for, selection_alpha, summarize_rows,
)
from sampleattn.reference import attention_rows_ref, relative_error
from sampleattn.sampling import choose_sampled_rows
from sampleattn.selection import select_columns
from sampleattn.synthetic import structured_qkv

TILES = [(64, 64, 4, 3), (64, 64, 8, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4),
         (128, 128, 8, 3), (128, 32, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2)]




def sweep(seqlen, results):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    q, k, v = structured_qkv(1, seqlen, seqlen, 32, 8, 128, dtype=torch.bfloat16, device="cuda", seed=0)
    flops = 4 * seqlen * seqlen * 128 * 32 / 2
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(4, 1), v.transpose(1, 2).repeat_interleave(4, 1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn = cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True))
    qh = kh = vh = None  # free the expanded copies before the sweep
    results.append({"seqlen": seqlen, "what": "sdpa_cudnn", "ms": cudnn, "tflops": flops / cudnn / 1e9})
    full_window = torch.full((32,), seqlen, dtype=torch.int32, device="cuda")
    no_cols = torch.full((1, 32, 1, 1), seqlen, dtype=torch.int32, device="cuda")
    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    p = plan(q, k, config)
    rows = torch.randperm(seqlen, device="cuda")[:128].sort().values
    oracle_full = attention_rows_ref(q, k, v, rows)
    oracle_plan = attention_rows_ref(q, k, v, rows, plan=p)
    results.append({"seqlen": seqlen, "what": "plan", "density": p.mean_density,
                    "retained_mean": float(p.retained_mean.mean()), "retained_min": float(p.retained_min.min()),
                    "error_vs_full": relative_error(oracle_plan, oracle_full)})
    for bm, bn, warps, stages in TILES:
        row = {"seqlen": seqlen, "what": f"tile {bm}x{bn} w{warps} s{stages}"}
        try:
            seg = -(-seqlen // bm) * bm
            run_full = lambda: sparse_attention_fwd(q, k, v, no_cols, full_window, segment_rows=seg, q_per_sel=1,
                                                    scale=128 ** -0.5, block_m=bm, block_n=bn,
                                                    num_warps=warps, num_stages=stages)[0]
            row["full_err"] = relative_error(run_full()[:, rows], oracle_full)
            row["full_ms"] = cuda_ms(run_full)
            row["full_tflops"] = flops / row["full_ms"] / 1e9
            row["full_vs_cudnn"] = row["full_tflops"] / (flops / cudnn / 1e9)
            run_sparse = lambda: sparse_attention_fwd(q, k, v, p.col_idx, p.window, segment_rows=seg,
                                                      q_per_sel=p.q_per_sel, scale=p.scale, block_m=bm, block_n=bn,
                                                      num_warps=warps, num_stages=stages)[0]
            row["sparse_err"] = relative_error(run_sparse()[:, rows], oracle_plan)
            row["sparse_ms"] = cuda_ms(run_sparse)
        except Exception as error:  # a config that does not fit (shared memory) is reported, not fatal
            row["error"] = f"{type(error).__name__}: {str(error)[:160]}"
        results.append(row)
        print(json.dumps(row), flush=True)
    # Plan breakdown: each pass alone.
    for gran in ("query_head", "kv_head"):
        cfg = config.model_copy(update={"gqa_granularity": gran})
        qps = 4 if gran == "kv_head" else 1
        alpha, window = head_parameters(cfg, 32, seqlen)
        wd = window.cuda()
        seg_rows = segment_rows_for(cfg, seqlen)
        sr = choose_sampled_rows(seqlen, seqlen, n_rows=cfg.sampled_rows(seqlen), min_window=int(window.min()),
                                 block=cfg.sample_block, segment_rows=seg_rows, device="cuda")
        t_rows = cuda_ms(lambda: choose_sampled_rows(seqlen, seqlen, n_rows=cfg.sampled_rows(seqlen),
                                                     min_window=int(window.min()), block=cfg.sample_block,
                                                     segment_rows=seg_rows, device="cuda"))
        lse2, wmass = sampled_row_stats(q, k, sr.rows, wd, scale=128 ** -0.5, block_s=sr.block)
        t1 = cuda_ms(lambda: sampled_row_stats(q, k, sr.rows, wd, scale=128 ** -0.5, block_s=sr.block))
        scores = column_scores(q, k, sr.rows, wd, lse2, sr.seg_blocks, q_per_sel=qps, scale=128 ** -0.5, block_s=sr.block)
        t2 = cuda_ms(lambda: column_scores(q, k, sr.rows, wd, lse2, sr.seg_blocks, q_per_sel=qps,
                                           scale=128 ** -0.5, block_s=sr.block))
        ws, nc, _, _ = summarize_rows(wmass, torch.zeros_like(wmass), sr, window, seqlen_q=seqlen, seqlen_k=seqlen, q_per_sel=qps)
        reach = reach_per_segment(window, sr, seqlen_q=seqlen, seqlen_k=seqlen, segment_rows=seg_rows, q_per_sel=qps)
        col_idx, col_count = select_columns(scores, ws, nc, selection_alpha(alpha, qps), reach=reach)
        t_sel = cuda_ms(lambda: select_columns(scores, ws, nc, selection_alpha(alpha, qps), reach=reach))
        t3 = cuda_ms(lambda: stripe_mass(q, k, sr.rows, wd, lse2, sr.block_seg, col_idx, col_count, q_per_sel=qps,
                                         scale=128 ** -0.5, block_s=sr.block))
        t_plan = cuda_ms(lambda: plan(q, k, cfg))
        row = {"seqlen": seqlen, "what": f"plan breakdown {gran}", "rows_ms": t_rows, "row_stats_ms": t1,
               "column_scores_ms": t2, "select_ms": t_sel, "stripe_mass_ms": t3, "plan_total_ms": t_plan,
               "n_sampled": int((sr.rows >= 0).sum()), "kernel_block": sr.block}
        results.append(row)
        print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--lengths", default="32768,131072")
    args = parser.parse_args(argv)
    results: list[dict] = []
    started = time.time()
    for seqlen in [int(x) for x in args.lengths.split(",")]:
        sweep(seqlen, results)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "tile_sweep.json").write_text(json.dumps({"env": collect_env(), "results": results,
                                                                     "seconds": time.time() - started}, indent=1))
        torch.cuda.empty_cache()
    print_table(None, ("seqlen", "what", "full TFLOP/s (vs cuDNN)", "sparse ms", "errors"),
                [(r["seqlen"], r["what"], f"{r['full_tflops']:.0f} ({r['full_vs_cudnn']:.2f})", f"{r['sparse_ms']:.1f}",
                  f"{r['full_err']:.4f} {r['sparse_err']:.4f}") for r in results if "full_tflops" in r])
    return 0


if __name__ == "__main__":
    sys.exit(main())
