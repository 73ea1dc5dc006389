"""Paired bootstrap over error rows of the error ratio (share^2 rule / current rule) at the same nominal
beta (densities nearly equal, printed; the share^2 rule is at the same or lower density).

    cd /work/main && NROWS=2048 .venv/bin/python -P docs/results/2026-12-07-rules/estimator-study-2/bootstrap.py [layers...]
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from block_estimators import precompute, shares, group, select_sum, evaluate, log, LAYERS
torch.set_num_threads(2)
gen = torch.Generator().manual_seed(0)
for layer in LAYERS:
    P = precompute(layer)
    s = shares(P, "mean")
    ex2 = (P["EX"] ** 2).sum(-1)  # (Hq, R)
    for b in (0.97, 0.98, 0.99):
        d1, e1, _, se1 = evaluate(P, select_sum(P, group(P, s, "sum"), b), split=True)
        d2, e2, _, se2 = evaluate(P, select_sum(P, group(P, s ** 2, "sum"), 1 - (1 - b) ** 2), split=True)
        R = se1.shape[1]
        idx = torch.randint(0, R, (2000, R), generator=gen)
        a = se1.sum(0)[idx].sum(1); c = se2.sum(0)[idx].sum(1)
        ratio = (c / a).sqrt()
        lo, hi = torch.quantile(ratio, torch.tensor([0.025, 0.975])).tolist()
        log(f"L{layer} beta {b}: current d{d1:.3f} e{e1:.4f} | share^2 d{d2:.3f} e{e2:.4f} | ratio {e2/e1:.3f} "
            f"(95% bootstrap over {R} rows: {lo:.3f}-{hi:.3f}; share^2 better in {(ratio < 1).float().mean()*100:.0f}% of resamples)")
