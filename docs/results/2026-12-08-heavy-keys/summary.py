"""Compact table (ratios to the p1 and p2 rules) from heavy_keys.py's curves, and the tail check: of the
row-heads listed in ../2026-12-07-rules/estimator-study-2/tail_diag_r2048.log (they keep < 0.9 of their true
mass under the p1 rule at beta 0.99), how many keep >= 0.9 under a heavy-key variant at no more density; and a
paired bootstrap over the error rows (1,000 resamples) of the error ratio at matched density.

    cd /work/main && [WR=0.02] .venv/bin/python -P docs/results/2026-12-08-heavy-keys/summary.py [layers...]   # after heavy_keys.py
"""
import math, re, sys, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import heavy_keys as M

TAIL = "/work/main/docs/results/2026-12-07-rules/estimator-study-2/tail_diag_r2048.log"
SHOW = ["base p1", "base p2", "Ha p1 K16 s2% sum", "Ha p2 K16 s2% sum", "Ha p2 K16 s0.5% sum", "Hb p2 K16 s2% sum",
        "Ha p1 K64 s2% sum", "Ha p2 K64 s2% sum", "Ha p2 K64 s0.5% sum", "Ha p2 K64 s2% max", "Hb p2 K64 s2% sum",
        "Ha p2 K256 s2% sum", "Ha p2 K256 s0.5% sum", "Hb p2 K256 s2% sum", "Ha p2 K1024 s2% sum", "Hb p2 K1024 s2% sum",
        "Ha p2 K16 s2% sum perQ", "Ha p2 K64 s2% sum perQ", "Ha p1 K256 s2% sum perQ", "Ha p2 K256 s2% sum perQ",
        "Hb p2 K256 s2% sum perQ"]
TAILV = [("base", 2, 0, "", "", False), ("Ha", 1, 64, "2%", "sum", False), ("Ha", 2, 64, "2%", "sum", False), ("Ha", 2, 64, "2%", "sum", True), ("Ha", 2, 256, "2%", "sum", True),
         ("Ha", 2, 1024, "2%", "sum", False)]


def tail_rows(layer):
    out, on = [], False
    for line in open(TAIL):
        if line.startswith("L"):
            on = line.startswith(f"L{layer} p1.0 beta0.99")
        elif on:
            h, r, n90 = re.match(r"\s+h(\d+) row (\d+) .*keys for 90% of it: (\d+)", line).groups()
            out.append((int(h), int(r), int(n90)))
    return out


for layer in [int(a) for a in sys.argv[1:]] or [24, 14]:
    C = torch.load(f"/tmp/hk/curves{layer}{M.SUF}.pt"); curves, colden = C["curves"], C["colden"]
    ref = {pw: {b: (d, e) for d, e, b in curves[f"base p{pw}"]} for pw in (1, 2)}
    bs = (0.97, 0.98, 0.99); tg = [ref[1][b][0] for b in bs]
    print(f"\n## L{layer}: error at the p1 rule's densities at beta 0.97 / 0.98 / 0.99 (d = "
          + " / ".join(f"{x:.3f}" for x in tg) + "); (ratio to p1 / to p2 at that density)")
    print("| variant | @" + " | @".join(f"{x:.3f}" for x in tg) + " | columns alone add |\n|---|---|---|---|---|")
    e2 = [M.interp([(d, e) for d, e, _ in curves["base p2"]], x) for x in tg]
    for name in SHOW:
        cells = []
        for x, b, eb2 in zip(tg, bs, e2):
            e = M.interp([(d, e) for d, e, _ in curves[name]], x)
            cells.append("-" if math.isnan(e) else f"{e:.4f} ({e / ref[1][b][1]:.2f} / {e / eb2:.2f})")
        cd = colden.get(name.split(" ", 2)[-1]) if name.startswith("H") else None
        print(f"| {name} | " + " | ".join(cells) + f" | {'-' if cd is None else f'{cd:.4f}'} |")
    # lower densities (towards the 128K operating point): the p1 rule's densities at beta 0.9 / 0.95
    lo = [ref[1][b][0] for b in (0.9, 0.95)]
    for name in SHOW:
        cells = []
        for x in lo:
            e, e1, e2_ = (M.interp([(d, e) for d, e, _ in curves[n]], x) for n in (name, "base p1", "base p2"))
            cells.append("-" if math.isnan(e) else f"@{x:.3f} {e:.4f} ({e / e1:.2f} / {e / e2_:.2f})")
        print(f"L{layer} low density {name}: " + "  ".join(cells))
    # tail check (its rows and the p1 rule of tail_diag_r2048.log: window 4% only)
    if M.WR != 0.04:
        continue
    P = M.precompute(layer); q, k, v = M.qkv(layer)
    ridx = {r: i for i, r in enumerate(P["rows"].tolist())}
    listed = [(h, ridx[r]) for h, r, _ in tail_rows(layer)]
    one = torch.tensor([n90 == 1 for _, _, n90 in tail_rows(layer)])  # the dropped block's mass on one key
    base_s = torch.softmax(P["QK"] + P["LV"], -1)
    d0, e0, m0, _ = M.evaluate(P, M.select_sum(P, M.group(P, base_s, "sum"), 0.99))
    hi, ri = torch.tensor([a for a, _ in listed]), torch.tensor([b for _, b in listed])
    print(f"\nL{layer} tail: p1 beta 0.99 d{d0:.3f} e{e0:.4f}: {len(listed)} listed row-heads, retained "
          f"{[round(x, 3) for x in m0[hi, ri].tolist()]}; all row-heads < 0.9: {(m0 < 0.9).sum().item()}")
    for kind, pw, K, sn, how, per_q in TAILV:
        if kind == "base":
            HT, sc = None, M.group(P, base_s ** pw, "sum")
        else:
            idx = M.heavy_sets(P, q, k, M.STRIDES[sn], how, K, per_q); HT = M.heavy_terms(P, q, k, v, idx)
        sc = sc if kind == "base" else M.group(P, base_s ** pw, "sum") if kind == "Ha" else M.hb_shares(P, q, k, idx, pw)
        lo_, hi_ = 0.5, 0.99999  # bisect beta: the largest whose density does not exceed the p1 rule's at 0.99
        for _ in range(25):
            mid = (lo_ + hi_) / 2
            if M.evaluate(P, M.select_sum(P, sc, 1 - (1 - mid) ** pw), HT)[0] <= d0:
                lo_ = mid
            else:
                hi_ = mid
        b = lo_; d, e, m, _ = M.evaluate(P, M.select_sum(P, sc, 1 - (1 - b) ** pw), HT)
        ok = m[hi, ri] >= 0.9; fixed = ok.sum().item()
        print(f"L{layer} tail: {kind} p{pw}" + (f" K{K} s{sn} {how}{' perQ' if per_q else ''}" if K else "") + f" beta {b:.5f} d{d:.3f} e{e:.4f}: "
              f"{fixed}/{len(listed)} listed fixed (retained >= 0.9; {ok[one].sum().item()}/{one.sum().item()} of those whose "
              f"block mass sat on one key), retained {[round(x, 3) for x in m[hi, ri].tolist()]}; "
              f"all row-heads < 0.9: {(m < 0.9).sum().item()}")

    # paired bootstrap over rows: per beta the per-row squared error, curves re-interpolated per resample
    def rowcurve(score, pw, HT=None):
        return [M.evaluate(P, M.select_sum(P, score, 1 - (1 - b) ** pw), HT)[::3] for b in M.BETAS]  # (d, se)
    den = (P["EX"] ** 2).sum(-1).sum(0)                                     # (R,)
    RC = {f"base p{pw}": rowcurve(M.group(P, base_s ** pw, "sum"), pw) for pw in (1, 2)}
    for kind, pw, K, sn, how, per_q in TAILV[1:]:
        idx = M.heavy_sets(P, q, k, M.STRIDES[sn], how, K, per_q)
        RC[f"{kind} p{pw} K{K} s{sn} {how}{' perQ' if per_q else ''}"] = rowcurve(M.group(P, base_s ** pw, "sum"), pw,
                                                                            M.heavy_terms(P, q, k, v, idx))
    gen = torch.Generator().manual_seed(0); R = den.shape[0]
    W = torch.stack([torch.bincount(torch.randint(0, R, (R,), generator=gen), minlength=R) for _ in range(1000)]).float()
    W = torch.cat([torch.ones(1, R), W])                                    # row 0: the full sample
    def errs(curve):  # (1001, n_beta) errors, densities
        se = torch.stack([c[1].sum(0) for c in curve], 1)                   # (R, n_beta)
        return [c[0] for c in curve], torch.sqrt((W @ se) / (W @ den).unsqueeze(1))
    def at(ds, E, x):  # log-linear interpolation per resample
        i = max(j for j in range(len(ds) - 1) if ds[j] <= x); f = (x - ds[i]) / (ds[i + 1] - ds[i])
        return torch.exp(torch.log(E[:, i]) + f * (torch.log(E[:, i + 1]) - torch.log(E[:, i])))
    EE = {n: errs(c) for n, c in RC.items()}
    for n in list(RC)[1:]:
        for refn in ("base p1", "base p2"):
            if n == refn:
                continue
            cells = []
            for x in tg:
                r = at(*EE[n], x) / at(*EE[refn], x)
                lo, hi = torch.quantile(r[1:], torch.tensor([0.025, 0.975])).tolist()
                cells.append(f"@{x:.3f} {r[0]:.2f} ({lo:.2f}-{hi:.2f})")
            print(f"L{layer} bootstrap {n} / {refn}: " + "  ".join(cells))
