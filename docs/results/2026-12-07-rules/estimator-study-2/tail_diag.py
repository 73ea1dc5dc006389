"""Diagnostic of the error tail: for the row-heads that keep < 0.9 of their true mass under the
current rule (beta 0.99), the dropped block that holds most of their true mass: its true mass, the
row's estimated share of it (pooled mean key), the block's summed score rank in its query block, and
how many keys of the block hold 90% of the row's mass there (one dominant key or spread).

    cd /work/main && NROWS=2048 .venv/bin/python -P docs/results/2026-12-07-rules/estimator-study-2/tail_diag.py [layers...]
"""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from block_estimators import precompute, shares, group, select_sum, evaluate, log, BR, LAYERS, cap
torch.set_num_threads(2)

for layer in LAYERS:
    P = precompute(layer)
    s = shares(P, "mean")
    sc = group(P, s, "sum")
    for pw, b in ((1.0, 0.99), (2.0, 0.9999)):
        ch = select_sum(P, group(P, s ** pw, "sum"), b)
        d, e, m, se = evaluate(P, ch, split=True)
        rows = P["rows"]; g = P["g"]
        bad = (m < 0.9).nonzero().tolist()
        log(f"L{layer} p{pw} beta{b}: d{d:.3f} e{e:.4f}; {len(bad)} row-heads retain < 0.9")
        q = cap[layer]["q"][0].float(); k = cap[layer]["k"][0].float()
        for h, ri in bad[:25]:
            r = rows[ri].item(); kv = h // g; qb = r // BR
            kept = ch[kv, qb]
            dropped_mass = torch.where(kept, 0.0, P["Pm"][h, ri])
            c = int(dropped_mass.argmax())
            est = s[h, r, c].item()
            order = torch.argsort(sc[kv, qb], descending=True)
            rank = int((order == c).nonzero()[0])
            logits = q[r, h] @ k[c * BR:(c + 1) * BR, kv].T / 8.0
            p = torch.softmax(logits, -1).sort(descending=True).values
            n90 = int((p.cumsum(0) < 0.9).sum()) + 1
            tm = P["TM"][h, r, c].item()
            log(f"  h{h} row {r} (qb {qb}) retained {m[h, ri]:.3f}: block {c} true mass {tm:.3f} est share {est:.4f} "
                f"rank {rank}/{int(kept.sum())} kept, keys for 90% of it: {n90}, top key {p[0]:.2f}; "
                f"other rows' mean est share {s[h, qb*BR:(qb+1)*BR, c].mean():.4f} max {s[h, qb*BR:(qb+1)*BR, c].max():.4f}")
