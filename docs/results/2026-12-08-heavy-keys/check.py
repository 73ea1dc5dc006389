"""Checks of heavy_keys.py's fast evaluation: (1) density and error of one Ha mask (per-query-head columns, beta 0.98)
against a brute-force masked softmax over the error rows and a dense count of kept pairs; (2) the per query head
overlap of the per-query-head heavy sets with the KV-head set (why perQ equals KV at layer 14).

    cd /work/main && .venv/bin/python -P docs/results/2026-12-08-heavy-keys/check.py        # after heavy_keys.py (caches)
"""
import math, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.argv = sys.argv[:1]
import torch
import heavy_keys as M

P = M.precompute(24); q, k, v = M.qkv(24); S, w, g, rows = M.S, P["w"], P["g"], P["rows"]
base = M.group(P, torch.softmax(P["QK"] + P["LV"], -1), "sum")
idx = M.heavy_sets(P, q, k, 50, "max", 64, True); HT = M.heavy_terms(P, q, k, v, idx)
ch = M.select_sum(P, base, 0.98)
d, e = M.evaluate(P, ch, HT)[:2]
j = torch.arange(S); num = den = kept = 0.0
for h in range(P["Hq"]):
    kv = h // g; col = torch.zeros(S, dtype=torch.bool); col[idx[h]] = True
    for r in (rows, *torch.arange(S).split(2048)):
        m = (j.view(1, -1) <= r.view(-1, 1)) & ((j.view(1, -1) > r.view(-1, 1) - w) | col.view(1, -1)
                                                | ch[kv][r // M.BR].repeat_interleave(M.KB, 1))
        if r is rows:
            o = torch.softmax((q[rows, h] @ k[:, kv].T / 8).masked_fill(~m, float("-inf")), -1) @ v[:, kv]
            num += ((o - P["EX"][h]) ** 2).sum().item(); den += (P["EX"][h] ** 2).sum().item()
        else:
            kept += m.sum().item()
print(f"fast: d {d:.6f} e {e:.6f}   brute force: d {kept / (P['vis_sum'].item() * P['Hq']):.6f} e {math.sqrt(num / den):.6f}")
for layer in (24, 14):
    P = M.precompute(layer); q, k, v = M.qkv(layer)
    for K in (16, 64, 256):
        a = M.heavy_sets(P, q, k, 50, "sum", K, True); b = M.heavy_sets(P, q, k, 50, "sum", K, False)
        print(f"L{layer} K{K} s2% sum: per-query-head set overlap with the KV-head set, per query head:",
              [round(len(set(a[h].tolist()) & set(b[h].tolist())) / K, 2) for h in range(P["Hq"])])
