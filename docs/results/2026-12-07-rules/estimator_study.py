"""Block-rule estimators against the exact block mass at 16K on the CPU (2026-12-07 study).

    python docs/results/2026-12-07-rules/estimator_study.py 16384 0.04      # about 20 minutes on 2 cores

Captures SmolLM2-135M layers 14 and 24 on 16K tokens of the essays (bench.harness.capture_smollm2,
cached in /tmp/x), then for each estimator (pooled mean keys; every 2nd / 4th row; mean plus a
per-channel variance term; the exact block mass) chooses key blocks of 128 per query block of 128
at several beta with select_key_blocks_ref and prints the density and the relative L2 error on
256 seeded rows, masks evaluated exactly. Output of that run: estimator_study.log beside this file.
"""
import os
os.makedirs("/tmp/x", exist_ok=True)
import sys as _sys
if not os.path.exists(f"/tmp/x/cap{int(_sys.argv[1])}.pt"):
    import torch as _t
    from sampleattn.bench import harness as _h
    _t.save(_h.capture_smollm2(int(_sys.argv[1]), [14, 24], device="cpu"), f"/tmp/x/cap{int(_sys.argv[1])}.pt")
import torch, math, sys, time
torch.set_num_threads(2)
from sampleattn.rules.block import candidate_blocks, select_key_blocks_ref
from sampleattn.bench.harness import error_rows_for
L = int(sys.argv[1]); W = float(sys.argv[2]); KB = int(sys.argv[3]) if len(sys.argv) > 3 else 128
cap = torch.load(f"/tmp/x/cap{L}.pt")
BR = 128
def scores_est(q, k, kind, stride=1):
    # q (S, Hq, D) fp32, k (S, Hkv, D) -> (Hkv, n_qb, n_kb) summed over the group
    S, Hq, D = q.shape; Hkv = k.shape[1]; g = Hq // Hkv
    n_kb = -(-S // KB); pad = n_kb * KB - S
    kp = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad)).view(n_kb, KB, Hkv, D)
    cnt = torch.clamp(S - torch.arange(n_kb) * KB, max=KB).float()
    mu = kp.sum(1) / cnt.view(-1, 1, 1)
    var = (kp ** 2).sum(1) / cnt.view(-1, 1, 1) - mu ** 2
    scale = D ** -0.5
    rows = torch.arange(S)
    if stride > 1:
        rows = torch.clamp(torch.arange(0, S, stride) + stride - 1, max=S - 1)
    out = torch.zeros(Hkv, -(-S // BR), n_kb)
    first = torch.arange(n_kb) * KB
    size = torch.clamp(S - first, max=KB)
    for h in range(Hq):
        kv = h // g
        qq = q[rows, h]
        lg = qq @ mu[:, kv].T * scale
        if kind == "moments":
            lg = lg + 0.5 * scale ** 2 * (qq ** 2) @ var[:, kv].clamp(min=0).T
        vis = torch.minimum(rows.view(-1, 1) - first.view(1, -1) + 1, size.view(1, -1))
        lg = torch.where(vis > 0, lg + torch.log(vis.clamp(min=1).float()), float("-inf"))
        p = torch.softmax(lg, -1)
        out[kv].index_add_(0, rows // BR, p)
    return out

def scores_oracle(q, k):
    S, Hq, D = q.shape; Hkv = k.shape[1]; g = Hq // Hkv
    n_kb = -(-S // KB); out = torch.zeros(Hkv, -(-S // BR), n_kb)
    for h in range(Hq):
        for r0 in range(0, S, 2048):
            r = torch.arange(r0, min(S, r0 + 2048))
            s = q[r, h] @ k[:, h // g].T * D ** -0.5
            s = s.masked_fill(torch.arange(S).view(1, -1) > r.view(-1, 1), float("-inf"))
            p = torch.softmax(s, -1)
            pb = torch.nn.functional.pad(p, (0, n_kb * KB - S)).view(len(r), n_kb, KB).sum(-1)
            out[h // g].index_add_(0, r // BR, pb)
    return out

def evaluate(q, k, v, scores, beta, w, rows, exact):
    S, Hq, D = q.shape; Hkv = k.shape[1]; g = Hq // Hkv; n_kb = scores.shape[-1]
    window = torch.full((Hq,), w, dtype=torch.int32)
    cand = candidate_blocks(window, seqlen_q=S, seqlen_k=S, block_rows=BR, key_block=KB, q_per_sel=g)
    blk_idx, cnt = select_key_blocks_ref(scores.unsqueeze(0), cand, beta, sink_blocks=1, width=-(-n_kb // 16) * 16)
    chosen = torch.zeros(Hkv, scores.shape[1], n_kb + 1, dtype=torch.bool)
    chosen.scatter_(2, blk_idx[0].long(), True); chosen = chosen[..., :n_kb]
    # density over all rows
    pos = torch.arange(S)
    vis = (pos + 1).float()
    win = torch.clamp(pos + 1, max=w).float()
    first = torch.arange(n_kb) * KB
    left = torch.clamp(pos.view(-1, 1) - w + 1 - first.view(1, -1), min=0, max=KB).float()  # (S, n_kb) keys left of window
    dens = 0.0
    for kv in range(Hkv):
        ch = chosen[kv][pos // BR].float()  # (S, n_kb)
        kept = win + (ch * left).sum(-1)
        dens += (kept.sum() / vis.sum()).item()
    dens /= Hkv
    # error on rows
    num = 0.0; den = 0.0
    j = torch.arange(S).view(1, -1)
    for h in range(Hq):
        kv = h // g
        s = q[rows, h] @ k[:, kv].T * D ** -0.5
        p_i = rows.view(-1, 1)
        m = (j <= p_i) & ((j > p_i - w) | chosen[kv][rows // BR].repeat_interleave(KB, dim=1)[:, :S])
        o = torch.softmax(s.masked_fill(~m, float("-inf")), -1) @ v[:, kv]
        num += ((o - exact[h]) ** 2).sum().item(); den += (exact[h] ** 2).sum().item()
    return dens, math.sqrt(num / den)

for layer in (14, 24):
    t0 = time.time()
    q, k, v = (cap[layer][n][0].float() for n in ("q", "k", "v"))
    q = q.transpose(0, 1) if q.shape[0] != L else q
    S, Hq, D = q.shape
    rows = error_rows_for(S, 256)
    g = Hq // k.shape[1]
    exact = []
    for h in range(Hq):
        s = q[rows, h] @ k[:, h // g].T * D ** -0.5
        s = s.masked_fill(torch.arange(S).view(1, -1) > rows.view(-1, 1), float("-inf"))
        exact.append(torch.softmax(s, -1) @ v[:, h // g])
    w = math.ceil(W * S)
    ests = {"mean": scores_est(q, k, "mean"), "mean/4": scores_est(q, k, "mean", 4)} if KB == 64 else {"mean": scores_est(q, k, "mean"), "mean/2": scores_est(q, k, "mean", 2), "mean/4": scores_est(q, k, "mean", 4),
            "moments": scores_est(q, k, "moments"), "oracle": scores_oracle(q, k)}
    for name, sc in ests.items():
        res = []
        for beta in (0.9, 0.95, 0.97, 0.98, 0.99, 0.995):
            d, e = evaluate(q, k, v, sc, beta, w, rows, exact)
            res.append(f"b{beta}: d{d:.3f} e{e:.4f}")
        print(f"L{layer} {name:8s} " + " | ".join(res), flush=True)
    print("t", time.time() - t0, flush=True)
