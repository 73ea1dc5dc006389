"""Fifth round: the squared-share score in detail. Block score = sum over the query block's rows and
group heads of share**p (p = 1 is the current rule), selection unchanged (descending score until beta of
the query block's total). Finer p, beta mapped as beta_p = 1 - (1 - beta)**p so that beta keeps roughly
its meaning, row_stride 2 / 4 (cheaper estimate), blocks-per-query-block statistics (kernel padding),
and the error split of the p = 2 rule.

    cd /work/main && [NROWS=2048] .venv/bin/python -P docs/results/2026-12-07-rules/estimator-study-2/block_estimators5.py [layers...]
"""
import os
import math, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from block_estimators import precompute, shares, group, candmask, select_sum, evaluate, interp, log, BR, LAYERS
torch.set_num_threads(2)
BETAS = [0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999]

def strided(P, s, stride):
    """Zero every row but the last of each group of ``stride`` (the kernel's row_stride)."""
    if stride == 1:
        return s
    keep = (torch.arange(P["S"]) % stride) == stride - 1
    return s * keep.view(1, -1, 1)

def main():
    for layer in LAYERS:
        t0 = time.time()
        P = precompute(layer)
        log(f"L{layer} error rows: {len(P['rows'])}")
        results = {}
        def record(name, curve):
            results[name] = curve
            log(f"L{layer} {name:26s} " + " ".join(f"[{p[2]}] d{p[0]:.3f} e{p[1]:.4f}" for p in curve))
        base_s = shares(P, "mean")
        cm = candmask(P)
        chosen_at = {}
        for pw in (1.0, 1.5, 1.75, 2.0, 2.5):
            for stride in ((1, 2, 4) if pw in (1.0, 2.0) else (1,)):
                sc = group(P, strided(P, base_s, stride) ** pw, "sum")
                curve = []
                for b in BETAS:
                    ch = select_sum(P, sc, 1 - (1 - b) ** pw)
                    curve.append(evaluate(P, ch) + (b,))
                    if stride == 1:
                        chosen_at[(pw, b)] = ch
                record(f"p{pw} stride{stride}", curve)
        log(f"  t {time.time()-t0:.0f}s")
        # blocks per (KV head, query block) among candidates: mean, max (the kernel pads to the max)
        for pw, b in ((1.0, 0.98), (1.0, 0.99), (2.0, 0.98), (2.0, 0.99), (2.0, 0.993), (2.0, 0.995)):
            ch = chosen_at[(pw, b)]
            cnt = ch.sum(-1).float(); nc = cm.sum(-1).float().clamp(min=1)
            d, e, m, se = evaluate(P, ch, split=True)
            low = m < 0.9
            log(f"L{layer} p{pw} beta{b}: d{d:.3f} e{e:.4f} blocks/qb mean {cnt.mean():.1f} max {cnt.max():.0f} "
                f"(candidates mean {nc.mean():.1f}); retained mean {m.mean():.4f} min {m.min():.4f}; rows retained<0.9: "
                f"{low.float().mean().item()*100:.2f}% carry {(se[low].sum()/se.sum()).item()*100:.1f}% of squared error")
        base = {p[2]: p[0] for p in results["p1.0 stride1"]}
        targets = [base[0.95], base[0.97], base[0.98], base[0.99], base[0.995]]
        log(f"\nL{layer} matched density, {len(P['rows'])} rows (targets = p1 stride1 densities at beta 0.95/0.97/0.98/0.99/0.995: "
            + " ".join(f"{x:.3f}" for x in targets) + ")")
        for name, curve in results.items():
            log(f"L{layer} {name:26s} " + " ".join(f"e@{x:.3f}={interp([(p[0], p[1]) for p in curve], x):.4f}" for x in targets))
        log(f"L{layer} total {time.time()-t0:.0f}s\n")

if __name__ == "__main__":
    main()
