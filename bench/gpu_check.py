"""The operator's correctness checks on a CUDA GPU in bf16/fp16, up to 32K tokens, plus a first
timing of the whole operator against PyTorch SDPA (cuDNN and flash backends).

Run: ``python -m sampleattn.bench.gpu_check --out DIR``. Writes ``DIR/gpu_check.json`` and
prints a table last. Exit status 1 if any check fails. Correctness always runs before timing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from sampleattn.timing import cuda_ms

from sampleattn import SampleAttentionConfig, collect_env, plan, sample_attention, sparse_attention
from sampleattn.planning import SparsePlan
from sampleattn.reference import attention_ref, attention_rows_ref, plan_ref, relative_error
from sampleattn.selection import density_per_head

DEVICE = "cuda"



def structured_inputs(seqlen, hq, hkv, d, dtype, seed=0):
    """Random q/k/v with sinks, stripe columns and a local window (planted on the GPU)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(1, seqlen, hq, d, device=DEVICE, generator=g)
    k = torch.randn(1, seqlen, hkv, d, device=DEVICE, generator=g) * 0.5
    v = torch.randn(1, seqlen, hkv, d, device=DEVICE, generator=g)
    direction = torch.randn(hkv, d, device=DEVICE, generator=g)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    n_stripes = max(4, seqlen // 200)
    stripes = torch.randperm(seqlen, device=DEVICE, generator=g)[:n_stripes]
    stripes = torch.cat([torch.arange(4, device=DEVICE), stripes])
    k[:, stripes] += 3.0 * direction
    q += 2.0 * direction.repeat_interleave(hq // hkv, dim=0)
    # Local structure: a slowly varying positional signal shared by q and k.
    walk = torch.cumsum(torch.randn(seqlen, 1, d, device=DEVICE, generator=g), 0)
    walk = walk / walk.norm(dim=-1, keepdim=True) * 2.5
    q += walk.unsqueeze(0)
    k += walk.unsqueeze(0)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_plan(batch, sq, sk, hq, hkv, d, seed):
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, max(2, sk // 4), (hq,), generator=g).to(torch.int32)
    n_cols = max(1, sk // 5)
    cols = torch.stack([torch.randperm(sk, generator=g)[:n_cols] for _ in range(batch * hq)])
    cols = torch.sort(cols, dim=-1).values.view(batch, hq, 1, -1).to(torch.int32)
    count = torch.full((batch, hq, 1), cols.shape[-1], dtype=torch.int32)
    seg_rows = -(-sq // 64) * 64
    cols, count, windows = cols.to(DEVICE), count.to(DEVICE), windows.to(DEVICE)
    density = density_per_head(cols, count, windows, seqlen_q=sq, seqlen_k=sk, segment_rows=seg_rows,
                               q_per_sel=1)
    ones = torch.ones(batch, hq, device=DEVICE)
    return SparsePlan(batch=batch, seqlen_q=sq, seqlen_k=sk, nheads_q=hq, nheads_kv=hkv,
                      gqa_granularity="query_head", segment_rows=seg_rows, scale=1 / math.sqrt(d),
                      window=windows, col_idx=cols, col_count=count, retained_mean=ones,
                      retained_min=ones, density=density, sampled_rows=torch.zeros(0, dtype=torch.int64))


def check_kernel(results, failures):
    """Stage 3 against dense attention under the same mask, bf16 and fp16."""
    cases = [(1, 1, 1, 2, 2, 64), (2, 97, 97, 4, 1, 64), (1, 1025, 1025, 32, 8, 128),
             (1, 500, 4096, 9, 3, 64), (1, 333, 777, 4, 2, 96), (1, 300, 300, 4, 4, 256),
             (1, 4096, 4096, 32, 8, 128)]
    for dtype in (torch.bfloat16, torch.float16):
        for i, (b, sq, sk, hq, hkv, d) in enumerate(cases):
            torch.manual_seed(i)
            q = torch.randn(b, sq, hq, d, device=DEVICE, dtype=dtype)
            k = torch.randn(b, sk, hkv, d, device=DEVICE, dtype=dtype)
            v = torch.randn(b, sk, hkv, d, device=DEVICE, dtype=dtype)
            p = random_plan(b, sq, sk, hq, hkv, d, seed=i)
            out = sparse_attention(q, k, v, p)
            mask = p.to_dense()
            golden = attention_ref(q.float(), k.float(), v.float(), scale=p.scale, mask=mask)
            same = attention_ref(q, k, v, scale=p.scale, mask=mask, upcast=False)
            err, base = relative_error(out, golden), relative_error(same, golden)
            ok = err <= 2 * base + 1e-5
            name = f"kernel {str(dtype)[6:]} b{b} {sq}x{sk} {hq}/{hkv} d{d}"
            results.append({"check": name, "error": err, "torch_same_dtype_error": base, "ok": ok})
            if not ok:
                failures.append(name)


def check_plan(results, failures):
    """Stages 1-2 with the kernels against the plain-PyTorch plan, bf16, 2K tokens."""
    for gran in ("query_head", "kv_head"):
        q, k, _ = structured_inputs(2048, 8, 2, 128, torch.bfloat16, seed=1)
        config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05,
                                       gqa_granularity=gran, dense_below=0)
        fast = plan(q, k, config, keep_scores=True)
        slow = plan_ref(q, k, config, keep_scores=True)
        score_err = relative_error(fast.scores, slow.scores)
        count_diff = int((fast.col_count - slow.col_count).abs().max())
        ok = score_err < 2e-2 and count_diff <= max(2, int(0.02 * slow.col_count.max()))
        name = f"plan vs plan_ref bf16 2k {gran}"
        results.append({"check": name, "score_rel_err": score_err, "max_count_diff": count_diff,
                        "retained_mean": float(fast.retained_mean.mean()), "ok": ok})
        if not ok:
            failures.append(name)


def check_operator(results, failures, lengths):
    """The whole operator on structured inputs up to 32K, bf16, Llama-3-8B geometry: its output
    against the fp32 oracle under the same plan, on 256 random rows (and against full attention)."""
    for seqlen in lengths:
        for gran in ("query_head", "kv_head"):
            q, k, v = structured_inputs(seqlen, 32, 8, 128, torch.bfloat16, seed=seqlen)
            config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05,
                                           gqa_granularity=gran, dense_below=0)
            out, p = sample_attention(q, k, v, config, return_plan=True)
            rows = torch.randperm(seqlen, device=DEVICE)[:256].sort().values
            rows[-1] = seqlen - 1
            oracle = attention_rows_ref(q, k, v, rows, plan=p)
            full = attention_rows_ref(q, k, v, rows)
            err = relative_error(out[:, rows], oracle)
            ok = err < 1e-2 and not torch.isnan(out).any()
            name = f"operator bf16 {seqlen} 32/8 d128 {gran}"
            results.append({"check": name, "error_vs_same_plan": err, "error_vs_full": relative_error(out[:, rows], full),
                            "density": p.mean_density, "retained_mean": float(p.retained_mean.mean()),
                            "retained_min": float(p.retained_min.min()),
                            "selected_cols_mean": float(p.n_selected.float().mean()), "ok": ok})
            if not ok:
                failures.append(name)


def check_rescoring(results, failures, lengths):
    """The rescoring selection: its ranking kernels against the dense oracle at 2K (bf16), then
    the whole operator with it against the fp32 oracle under its own plan."""
    from sampleattn.kernels import rescore_candidates
    from sampleattn.reference import rescore_ref

    for gran, stride in (("query_head", 1), ("kv_head", 4)):
        q, k, _ = structured_inputs(2048, 8, 2, 128, torch.bfloat16, seed=2)
        config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, gqa_granularity=gran,
                                       dense_below=0, selection="rescored", candidate_alpha=0.999,
                                       rescore_stride=stride)
        cand = plan(q, k, config.model_copy(update={"selection": "sampled", "alpha": 0.999}))
        kw = {"q_per_sel": cand.q_per_sel, "scale": cand.scale, "block_m": config.block_m, "m_stride": stride}
        fast = rescore_candidates(q, k, cand.col_idx, cand.col_count, cand.window, **kw)
        slow = rescore_ref(q, k, cand.col_idx, cand.col_count, cand.window, **kw)
        score_err = relative_error(fast, slow)
        fast_plan, slow_plan = plan(q, k, config), plan_ref(q, k, config)
        count_diff = int((fast_plan.col_count - slow_plan.col_count).abs().max())
        ok = score_err < 2e-2 and count_diff <= max(2, int(0.02 * slow_plan.col_count.max()))
        name = f"rescoring vs rescore_ref bf16 2k {gran} stride {stride}"
        results.append({"check": name, "score_rel_err": score_err, "max_count_diff": count_diff,
                        "density": fast_plan.mean_density, "candidate_density": float(fast_plan.candidate_density.mean()),
                        "ok": ok})
        if not ok:
            failures.append(name)
    for seqlen in lengths:
        q, k, v = structured_inputs(seqlen, 32, 8, 128, torch.bfloat16, seed=seqlen)
        config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0,
                                       selection="rescored", candidate_alpha=0.999)
        out, p = sample_attention(q, k, v, config, return_plan=True)
        rows = torch.randperm(seqlen, device=DEVICE)[:256].sort().values
        rows[-1] = seqlen - 1
        err = relative_error(out[:, rows], attention_rows_ref(q, k, v, rows, plan=p))
        ok = err < 1e-2 and not torch.isnan(out).any()
        name = f"operator rescored bf16 {seqlen} 32/8 d128"
        results.append({"check": name, "error_vs_same_plan": err,
                        "error_vs_full": relative_error(out[:, rows], attention_rows_ref(q, k, v, rows)),
                        "density": p.mean_density, "candidate_density": float(p.candidate_density.mean()), "ok": ok})
        if not ok:
            failures.append(name)


def timing(results, lengths):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    for seqlen in lengths:
        q, k, v = structured_inputs(seqlen, 32, 8, 128, torch.bfloat16, seed=seqlen)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        kh_e, vh_e = kh.repeat_interleave(4, 1), vh.repeat_interleave(4, 1)
        row = {"timing": seqlen}
        for name, backend in (("sdpa_cudnn_ms", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash_ms", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    row[name] = cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh_e, vh_e, is_causal=True))
            except RuntimeError as error:
                row[name] = None
                row[name + "_error"] = str(error)[:200]
        for gran in ("query_head", "kv_head"):
            config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05,
                                           gqa_granularity=gran, dense_below=0)
            p = plan(q, k, config)
            row[f"{gran}_plan_ms"] = cuda_ms(lambda: plan(q, k, config))
            row[f"{gran}_attn_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, p))
            row[f"{gran}_total_ms"] = cuda_ms(lambda: sample_attention(q, k, v, config))
            row[f"{gran}_density"] = p.mean_density
        for stride in (1, 4):
            config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0,
                                           selection="rescored", candidate_alpha=0.999, rescore_stride=stride)
            p = plan(q, k, config)
            tag = f"rescored_s{stride}"
            row[f"{tag}_plan_ms"] = cuda_ms(lambda: plan(q, k, config))
            row[f"{tag}_attn_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, p))
            row[f"{tag}_density"] = p.mean_density
            row[f"{tag}_candidate_density"] = float(p.candidate_density.mean())
        full = SampleAttentionConfig(alpha=1.0, window_ratio=1.0, dense_below=0)
        pf = plan(q, k, full)
        row["full_density_attn_ms"] = cuda_ms(lambda: sparse_attention(q, k, v, pf))
        flops = 4 * seqlen * seqlen * 128 * 32 / 2
        row["full_density_tflops"] = flops / row["full_density_attn_ms"] / 1e9
        if row.get("sdpa_cudnn_ms"):
            row["cudnn_tflops"] = flops / row["sdpa_cudnn_ms"] / 1e9
        results.append(row)
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for gpu_check.json")
    parser.add_argument("--lengths", default="8192,16384,32768", help="operator check lengths")
    parser.add_argument("--timing-lengths", default="32768,131072", help="timing lengths ('' to skip)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: this check runs on a GPU", file=sys.stderr)
        return 2
    results: list[dict] = []
    failures: list[str] = []
    started = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run stopped early still leaves its results
        report = {"env": collect_env(), "results": results, "failures": failures,
                  "seconds": time.time() - started}
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=1))

    check_kernel(results, failures)
    save()
    check_plan(results, failures)
    save()
    check_operator(results, failures, [int(x) for x in args.lengths.split(",") if x])
    save()
    check_rescoring(results, failures, [int(x) for x in args.lengths.split(",") if x][-1:])
    save()
    if not failures and args.timing_lengths:
        timing(results, [int(x) for x in args.timing_lengths.split(",") if x])
        save()
    for r in results:
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}))
    print(f"{len(results)} results, {len(failures)} failed: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
