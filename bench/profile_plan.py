"""Where the operator's time goes per call, host side and device side (torch.profiler).

For SmolLM2's geometry at 8K (where the tuner measured the operator slower than dense) and
Llama-3-8B's at 32K: wall time per call of the plan, of stage 3 and of dense SDPA (CUDA events),
and the profiler's top operations by host time and by device time.

Run: ``python -m sampleattn.bench.profile_plan --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from sampleattn import SampleAttentionConfig, collect_env, plan, sparse_attention
from sampleattn.synthetic import structured_qkv
from sampleattn.timing import cuda_ms

CASES = [("smollm2", 8192, 9, 3, 64), ("llama3", 32768, 32, 8, 128)]


def profile_case(name, seqlen, hq, hkv, d, out_dir: Path) -> dict:
    q, k, v = structured_qkv(1, seqlen, seqlen, hq, hkv, d, dtype=torch.bfloat16, device="cuda", seed=0)
    config = SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0)
    p = plan(q, k, config)
    group = hq // hkv
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(group, 1), v.transpose(1, 2).repeat_interleave(group, 1)
    row = {
        "case": f"{name} {seqlen}", "density": p.mean_density,
        "plan_ms": cuda_ms(lambda: plan(q, k, config), repeat=20),
        "attention_ms": cuda_ms(lambda: sparse_attention(q, k, v, p), repeat=20),
        "sdpa_ms": cuda_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True), repeat=20),
    }
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            sparse_attention(q, k, v, plan(q, k, config))
        torch.cuda.synchronize()
    table_cpu = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    table_gpu = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12)
    (out_dir / f"profile_{name}_{seqlen}.txt").write_text(table_cpu + "\n\n" + table_gpu)
    print(f"== {name} {seqlen}: {json.dumps({k_: round(v_, 3) if isinstance(v_, float) else v_ for k_, v_ in row.items()})}")
    print(table_cpu[:6000])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [profile_case(*case, out_dir) for case in CASES]
    (out_dir / "profile_plan.json").write_text(json.dumps({"env": collect_env(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
