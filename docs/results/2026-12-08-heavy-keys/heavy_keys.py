"""Heavy key columns + the block rule, at equal density (CPU study, 16K, 2026-12-08).

    cd /work/main && [WR=0.02] .venv/bin/python -P docs/results/2026-12-08-heavy-keys/heavy_keys.py [layers...]

Inputs, metric and helpers as docs/results/2026-12-07-rules/estimator-study-2 (cap16384.pt, window 4%,
blocks of 128, sink block kept, exact mask evaluation, relative L2 error on the same 2,048 seeded rows,
log-linear interpolation at matched density). Variants:
  base pP      the current rule, block score = sum of share**P, target 1-(1-beta)**P
  Ha K s how   window + top-K heavy key columns + blocks from the UNCHANGED pooled estimate
  Hb K s how   as Ha, but the estimate treats the heavy keys exactly (own logits, removed from the pooled
               means and counts); their shares count as already covered (added to the forced sink block)
Heavy columns: sampled rows r = stride-1, 2*stride-1, ... (stride = round(1/s)); each row's exact softmax
restricted to keys left of its window and outside the sink block; per key the sum ("sum") or max ("max")
of these probabilities over the sampled rows (and the KV head's query heads, "kv"; or per query head, "q").
"""
import math, os, sys, time
sys.path.insert(0, "/work/main/docs/results/2026-12-07-rules/estimator-study-2")
import torch
from block_estimators import group, select_sum, interp, error_rows_for, cap, log, BR, KB  # noqa: F401
from sampleattn.rules.block import candidate_blocks
torch.set_num_threads(2)

S, NROWS = 16384, 2048
WR = float(os.environ.get("WR", "0.04"))  # window ratio; 0.02 = the 128K benchmark's
SUF = "" if WR == 0.04 else f"_w{WR}"
LAYERS = [int(a) for a in sys.argv[1:]] or [24, 14]
BETAS = [0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.996, 0.998, 0.999]
KS, STRIDES = (16, 64, 256, 1024), {"0.5%": 200, "2%": 50}


def qkv(layer):
    return [cap[layer][n][0].float() for n in ("q", "k", "v")]  # (S, H, D)


def precompute(layer):
    """Pooled logits, the error rows' exact outputs and their window / per-block decomposition."""
    path = f"/tmp/hk/pre{layer}{SUF}.pt"
    if os.path.exists(path):
        return torch.load(path)
    q, k, v = qkv(layer)
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[2]; g = Hq // Hkv; sc = D ** -0.5
    n_kb = S // KB; w = math.ceil(WR * S); pos = torch.arange(S); first = torch.arange(n_kb) * KB
    kbar = k.view(n_kb, KB, Hkv, D).mean(1)
    QK = torch.stack([q[:, h] @ kbar[:, h // g].T * sc for h in range(Hq)])            # (Hq, S, n_kb)
    visn = torch.minimum(pos.view(-1, 1) - first.view(1, -1) + 1, torch.tensor(KB))
    LV = torch.where(visn > 0, torch.log(visn.clamp(min=1).float()), float("-inf"))
    gen = torch.Generator().manual_seed(7)  # the 2,048 rows of the earlier study (NROWS=2048)
    rows = torch.randperm(S, generator=gen)[:NROWS].sort().values; rows[-1] = S - 1
    R = len(rows); j = torch.arange(S)
    Pm = torch.zeros(Hq, R, n_kb); Po = torch.zeros(Hq, R, n_kb, D)
    Wm = torch.zeros(Hq, R); Wo = torch.zeros(Hq, R, D); EX = torch.zeros(Hq, R, D); LSE = torch.zeros(Hq, R)
    vis = j.view(1, -1) <= rows.view(-1, 1); inwin = vis & (j.view(1, -1) > rows.view(-1, 1) - w)
    for h in range(Hq):
        kv = h // g
        s = (q[rows, h] @ k[:, kv].T * sc).masked_fill(~vis, float("-inf"))
        LSE[h] = torch.logsumexp(s, -1); p = torch.exp(s - LSE[h].view(-1, 1))
        EX[h] = p @ v[:, kv]
        pw = torch.where(inwin, p, 0.0); pb = p - pw
        Wm[h] = pw.sum(-1); Wo[h] = pw @ v[:, kv]
        Pm[h] = pb.view(R, n_kb, KB).sum(-1)
        Po[h] = torch.einsum("rck,ckd->rcd", pb.view(R, n_kb, KB), v[:, kv].view(n_kb, KB, D))
    left = torch.clamp(pos.view(-1, 1) - w + 1 - first.view(1, -1), min=0, max=KB).float()
    window = torch.full((Hq,), w, dtype=torch.int32)
    cand = candidate_blocks(window, seqlen_q=S, seqlen_k=S, block_rows=BR, key_block=KB, q_per_sel=g)
    P = dict(QK=QK, LV=LV, rows=rows, Pm=Pm, Po=Po, Wm=Wm, Wo=Wo, EX=EX, LSE=LSE,
             LeftQB=left.view(S // BR, BR, n_kb).sum(1), win_sum=torch.clamp(pos + 1, max=w).float().sum(),
             vis_sum=(pos + 1).float().sum(), cand=cand, Hq=Hq, Hkv=Hkv, g=g, S=S, n_kb=n_kb, w=w, D=D)
    os.makedirs("/tmp/hk", exist_ok=True); torch.save(P, path)
    return P


def heavy_sets(P, q, k, stride, how, K, per_q):
    """(Hq, K) key indices: top-K by the sampled rows' summed / max probability left of their window."""
    g, w, sc = P["g"], P["w"], P["D"] ** -0.5
    r = torch.arange(stride - 1, S, stride); j = torch.arange(S)
    ok = (j.view(1, -1) <= r.view(-1, 1) - w) & (j.view(1, -1) >= KB)   # left of the window, not the sink block
    sc_h = []
    for h in range(P["Hq"]):
        s = (q[r, h] @ k[:, h // g].T * sc).masked_fill(j.view(1, -1) > r.view(-1, 1), float("-inf"))
        p = torch.where(ok, torch.softmax(s, -1), 0.0)
        sc_h.append(p.sum(0) if how == "sum" else p.amax(0))
    x = torch.stack(sc_h)                                                 # (Hq, S)
    if not per_q:
        x = x.view(P["Hkv"], g, S).sum(1) if how == "sum" else x.view(P["Hkv"], g, S).amax(1)
        x = x.repeat_interleave(g, 0)
    return x.topk(K, -1).indices.sort(-1).values


def heavy_terms(P, q, k, v, idx):
    """Per error row the heavy keys' exact probabilities left of its window, their values and blocks, and
    per (head, query block, key block) the number of heavy (row, key) pairs left of the window (density)."""
    g, w, sc, rows = P["g"], P["w"], P["D"] ** -0.5, P["rows"]
    pl, vH = [], []
    pos = torch.arange(S); first = torch.arange(P["n_kb"]) * KB
    HL = torch.zeros(P["Hq"], S // BR, P["n_kb"])
    for h in range(P["Hq"]):
        H = idx[h]; kv = h // g
        s = q[rows, h] @ k[H, kv].T * sc
        p = torch.exp(s - P["LSE"][h].view(-1, 1))
        pl.append(torch.where(H.view(1, -1) <= rows.view(-1, 1) - w, p, 0.0)); vH.append(v[H, kv])
        # heavy keys of block c with index <= pos - w, per row: cumulative count
        ind = torch.zeros(S); ind[H] = 1.0; cum = torch.cat([torch.zeros(1), ind.cumsum(0)])
        t = (pos - w).view(-1, 1).clamp(min=-1)
        upto = torch.minimum(t, (first + KB - 1).view(1, -1))
        cnt = (cum[(upto + 1).clamp(min=0)] - cum[first].view(1, -1)).clamp(min=0)
        cnt = torch.where(t >= first.view(1, -1), cnt, 0.0)
        HL[h] = cnt.view(S // BR, BR, -1).sum(1)
    return dict(pl=torch.stack(pl), vH=torch.stack(vH), blk=idx // KB, HL=HL)


def evaluate(P, chosen, HT=None):
    """chosen (Hkv, n_qb, n_kb) -> (density, rel. L2 error, retained mass (Hq, R), squared error (Hq, R));
    mask = window U heavy columns left of the window U chosen blocks."""
    g, rows = P["g"], P["rows"]
    chq = chosen.repeat_interleave(g, 0).float()                          # (Hq, n_qb, n_kb)
    kept = P["win_sum"] + (chq * P["LeftQB"]).sum((1, 2))
    ch = chq[:, rows // BR]                                               # (Hq, R, n_kb)
    m = P["Wm"] + (ch * P["Pm"]).sum(-1)
    o = P["Wo"] + torch.einsum("hrc,hrcd->hrd", ch, P["Po"])
    if HT is not None:
        kept = kept + (HT["HL"] * (1 - chq)).sum((1, 2))
        extra = HT["pl"] * (1 - torch.gather(ch, 2, HT["blk"].unsqueeze(1).expand(-1, len(rows), -1)))
        m = m + extra.sum(-1)
        o = o + torch.einsum("hrk,hkd->hrd", extra, HT["vH"])
    dens = (kept / P["vis_sum"]).mean().item()
    se = (((o / m.unsqueeze(-1)) - P["EX"]) ** 2).sum(-1)
    return dens, math.sqrt(se.sum().item() / (P["EX"] ** 2).sum().item()), m, se


def hb_shares(P, q, k, idx, pw):
    """(Hkv, n_qb, n_kb) block score with the heavy keys as own softmax entries; block 0 also gets the
    heavy keys' shares (covered mass: forced sink block)."""
    g, sc, n_kb, Hkv = P["g"], P["D"] ** -0.5, P["n_kb"], P["Hkv"]
    pos = torch.arange(S); first = torch.arange(n_kb) * KB
    out = torch.zeros(P["Hq"], S, n_kb)
    for h in range(P["Hq"]):
        H = idx[h]; kv = h // g; kb = k[:, kv]
        nh = torch.zeros(n_kb).index_add_(0, H // KB, torch.ones(len(H)))
        hs = torch.zeros(n_kb, kb.shape[1]).index_add_(0, H // KB, kb[H])
        kbar = (kb.view(n_kb, KB, -1).sum(1) - hs) / (KB - nh).clamp(min=1).view(-1, 1)
        ind = torch.zeros(S); ind[H] = 1.0; cum = torch.cat([torch.zeros(1), ind.cumsum(0)])
        upto = torch.minimum(pos.view(-1, 1), (first + KB - 1).view(1, -1))
        hv = torch.where(pos.view(-1, 1) >= first.view(1, -1), cum[upto + 1] - cum[first].view(1, -1), 0.0)
        nvis = torch.minimum(pos.view(-1, 1) - first.view(1, -1) + 1, torch.tensor(KB)).clamp(min=0) - hv
        lb = torch.where(nvis > 0, q[:, h] @ kbar.T * sc + torch.log(nvis.clamp(min=1)), float("-inf"))
        lh = (q[:, h] @ kb[H].T * sc).masked_fill(H.view(1, -1) > pos.view(-1, 1), float("-inf"))
        p = torch.softmax(torch.cat([lb, lh], -1), -1)
        out[h] = p[:, :n_kb] ** pw
        out[h, :, 0] += (p[:, n_kb:] ** pw).sum(-1)
    return out.view(Hkv, g, S // BR, BR, n_kb).sum((1, 3))


def sweep(P, score, pw, HT=None):
    return [evaluate(P, select_sum(P, score, 1 - (1 - b) ** pw), HT)[:2] + (b,) for b in BETAS]


def main():
    for layer in LAYERS:
        t0 = time.time(); P = precompute(layer); q, k, v = qkv(layer)
        log(f"# L{layer}: {len(P['rows'])} error rows x {P['Hq']} heads, window {P['w']}, precompute {time.time()-t0:.0f}s")
        base_s = torch.softmax(P["QK"] + P["LV"], -1)
        base = {pw: group(P, base_s ** pw, "sum") for pw in (1, 2)}
        curves, colden = {}, {}
        def record(name, curve):
            curves[name] = curve
            log(f"L{layer} {name:30s} " + " ".join(f"[{b}] d{d:.3f} e{e:.4f}" for d, e, b in curve))
        for pw in (1, 2):
            record(f"base p{pw}", sweep(P, base[pw], pw))
        tag = lambda K, sn, how, per_q: f"K{K} s{sn} {how}{' perQ' if per_q else ''}"
        configs = [(K, sn, how, False) for K in KS for sn in STRIDES for how in ("sum", "max")]
        configs += [(K, "2%", "sum", True) for K in KS]
        for K, sn, how, per_q in configs:
            idx = heavy_sets(P, q, k, STRIDES[sn], how, K, per_q)
            HT = heavy_terms(P, q, k, v, idx)
            colden[tag(K, sn, how, per_q)] = (HT["HL"].sum((1, 2)) / P["vis_sum"]).mean().item()
            for pw in (1, 2):
                record(f"Ha p{pw} {tag(K, sn, how, per_q)}", sweep(P, base[pw], pw, HT))
                record(f"Hb p{pw} {tag(K, sn, how, per_q)}", sweep(P, hb_shares(P, q, k, idx, pw), pw, HT))
            log(f"  t {time.time()-t0:.0f}s")
        torch.save(dict(curves=curves, colden=colden), f"/tmp/hk/curves{layer}{SUF}.pt")
        ref = {b: (d, e) for d, e, b in curves["base p1"]}
        tg = [ref[b][0] for b in (0.97, 0.98, 0.99)]
        log(f"\n## L{layer}: error at the p1 rule's densities at beta 0.97 / 0.98 / 0.99 (d = "
            + " / ".join(f"{x:.3f}" for x in tg) + "), (ratio to p1); cols = density the columns alone add")
        log("| variant | @0.97 | @0.98 | @0.99 | cols |\n|---|---|---|---|---|")
        for name, c in curves.items():
            cells = []
            for x, b in zip(tg, (0.97, 0.98, 0.99)):
                e = interp([(d, e) for d, e, _ in c], x)
                cells.append("-" if math.isnan(e) else f"{e:.4f} ({e / ref[b][1]:.2f})")
            cd = colden.get(name.split(" ", 2)[-1]) if name.startswith("H") else None
            log(f"| {name} | " + " | ".join(cells) + f" | {'' if cd is None else f'{cd:.4f}'} |")
        log(f"L{layer} total {time.time()-t0:.0f}s\n")


if __name__ == "__main__":
    main()
