"""Consolidated table: every studied variant, error interpolated (log-linear over its beta / threshold
sweep) at the current rule's densities at beta 0.97 / 0.98 / 0.99, per layer, on the given row sample.

    cd /work/main && [NROWS=2048] .venv/bin/python -P docs/results/2026-12-07-rules/estimator-study-2/summary.py [layers...]
"""
import os
import math, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from block_estimators import (precompute, shares, group, candmask, select_sum, select_perrow, evaluate, interp, log,
                              BR, LAYERS)
from block_estimators2 import sharp_shares, xattn_scores
from block_estimators3 import value_weighted
from block_estimators6 import extra_logits
torch.set_num_threads(2)
BETAS = [0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995, 0.9998]

def main():
    for layer in LAYERS:
        t0 = time.time()
        P = precompute(layer)
        cm = candmask(P); sink = cm & (torch.arange(P["n_kb"]) == 0)
        s = shares(P, "mean")
        ssum = group(P, s, "sum"); smax = group(P, s, "max")
        def beta_curve(score, pw=1.0, extra=None):
            out = []
            for b in BETAS:
                ch = select_sum(P, score, 1 - (1 - b) ** pw)
                if extra is not None:
                    ch = ch | extra
                out.append(evaluate(P, ch))
            return out
        UB, QO, QR = extra_logits(P, layer)
        LV = P["LV"]; vis = torch.isfinite(LV)
        lrest = torch.log((LV.exp() - 1).clamp(min=1e-30))
        V = {}
        V["current: sum of shares, beta (p=1)"] = beta_curve(ssum)
        V["oracle: exact block mass, p=1"] = beta_curve(group(P, P["TM"], "sum"))
        V["oracle: exact block mass, p=2"] = beta_curve(group(P, P["TM"] ** 2, "sum"), 2.0)
        for tau in (0.02, 0.05, 0.1, 0.2, 0.3):
            V[f"1 row floor tau={tau}"] = beta_curve(ssum, extra=cm & (smax >= tau))
        V["2 per-row beta_row, union"] = [evaluate(P, select_perrow(P, s, br)) for br in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)]
        V["2 per-row union, thr quantized 2^-k/2"] = [evaluate(P, select_perrow(P, s, br, quant=2)) for br in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
        V["3 max share >= thr"] = [evaluate(P, (cm & (smax >= t)) | sink) for t in (0.1, 0.05, 0.03, 0.02, 0.015, 0.01, 0.007, 0.005, 0.003, 0.002)]
        for lam in (0.25, 1.0):
            V[f"3 sum + {lam}*384*max, beta"] = beta_curve(ssum + lam * BR * P["g"] * smax)
        V["3 mean share >= eps (no beta)"] = [evaluate(P, (cm & (ssum / (BR * P['g']) >= e)) | sink) for e in
                                               (0.01, 0.005, 0.003, 0.002, 0.0015, 0.001, 0.0007, 0.0005, 0.0003, 0.0002, 0.0001)]
        for t in (1.25, 1.5, 2.0):
            V[f"4 sharpen logits x{t}"] = beta_curve(group(P, sharp_shares(P, t), "sum"))
        V["4 + 0.25*scale*|q|*max|k-kbar|"] = beta_curve(group(P, shares(P, "radius", lam=0.25), "sum"))
        V["4 + 0.5*scale*|q|*maxproj"] = beta_curve(group(P, shares(P, "proj", lam=0.5), "sum"))
        V["4 moments (diag variance)"] = beta_curve(group(P, shares(P, "moments"), "sum"))
        V["4 rep: rest-mean + max-norm key (2x)"] = beta_curve(group(P, shares(P, "rep"), "sum"))
        V["4 rep: rest-mean + max-dev key (2x)"] = beta_curve(group(P, torch.softmax(torch.where(vis, torch.logaddexp(QR + lrest, QO), float("-inf")), -1), "sum"))
        V["4 Quest bound mix, delta 8 (2x)"] = beta_curve(group(P, torch.softmax(torch.logaddexp(P["QK"] + LV, torch.where(vis, UB - 8.0, float("-inf"))), -1), "sum"))
        V["5 pooled keys of 64 (2x)"] = beta_curve(group(P, shares(P, "sub64"), "sum"))
        V["5 pooled keys of 32 (4x)"] = beta_curve(group(P, shares(P, "sub32"), "sum"))
        V["5 value-weighted (2x)"] = beta_curve(group(P, value_weighted(P, layer, s), "sum"))
        V["5 XAttention antidiag stride 16 (8x)"] = beta_curve(xattn_scores(P, layer, 16))
        V["5 XAttention antidiag stride 8 (16x)"] = beta_curve(xattn_scores(P, layer, 8))
        for pw in (1.5, 2.0, 2.5):
            V[f"6 sum of share^{pw}, beta_p=1-(1-beta)^{pw}"] = beta_curve(group(P, s ** pw, "sum"), pw)
        keep = (torch.arange(P["S"]) % 2) == 1
        V["6 share^2, row_stride 2 (0.5x)"] = beta_curve(group(P, (s * keep.view(1, -1, 1)) ** 2, "sum"), 2.0)
        keep = (torch.arange(P["S"]) % 4) == 3
        V["6 share^2, row_stride 4 (0.25x)"] = beta_curve(group(P, (s * keep.view(1, -1, 1)) ** 2, "sum"), 2.0)
        V["6 share^2 + row floor tau=0.05"] = beta_curve(group(P, s ** 2, "sum"), 2.0, extra=cm & (smax >= 0.05))
        base = V["current: sum of shares, beta (p=1)"]
        targets = [base[BETAS.index(b)][0] for b in (0.97, 0.98, 0.99)]
        base_e = [base[BETAS.index(b)][1] for b in (0.97, 0.98, 0.99)]
        log(f"\n## L{layer}, {len(P['rows'])} error rows x {P['Hq']} heads; window {P['w']}; error at the current rule's "
            f"densities at beta 0.97 / 0.98 / 0.99 (d = {targets[0]:.3f} / {targets[1]:.3f} / {targets[2]:.3f}); "
            "'-' = the sweep does not reach that density; (ratio to current)")
        for name, curve in V.items():
            cells = []
            for x, be in zip(targets, base_e):
                e = interp(curve, x)
                cells.append("      -       " if math.isnan(e) else f"{e:.4f} ({e/be:4.2f})")
            dr = f"d {min(c[0] for c in curve):.2f}-{max(c[0] for c in curve):.2f}"
            log(f"| {name:42s} | " + " | ".join(cells) + f" | {dr} |")
        log(f"L{layer} total {time.time()-t0:.0f}s")

if __name__ == "__main__":
    main()
