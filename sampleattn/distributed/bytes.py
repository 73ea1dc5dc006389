"""Bytes sent per rank by sparse context parallelism, against ring attention's.

``python -m sampleattn.distributed.bytes`` prints two tables (docs/distributed.md holds a run):

* **analytic**, Llama-3-8B geometry (32 query heads, 8 KV heads, head dim 128, bf16) at 1M, 2M
  and 4M tokens: ring attention sends every rank's k and v chunk around the ring, ``(W - 1) / W``
  of the sequence's K and V per rank; the sparse exchange sends what `sample_attention_cp` sends,
  modelled from the plan's shape: the window width, the sampled share of rows, and the share of
  the keys left of a rank's windows that its rows keep per KV head (``kept``: stripe columns,
  or key blocks, or both; from measured densities, see the docs page).
* **counted** on small CPU runs (gloo, spawned ranks, `structured_qkv` inputs in that geometry):
  the bytes `ByteCounter` recorded on each rank, per phase.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from dataclasses import dataclass

import torch

from sampleattn.geometry import Geometry

__all__ = ["ELEMENT_BYTES", "LLAMA3_8B", "Scenario", "analytic_bytes", "counted_bytes", "kv_bytes_per_key",
           "ring_bytes"]


#: Llama-3-8B's attention (the model catalogue's ``llama3``, which this core module does not import).
LLAMA3_8B = Geometry(num_layers=32, num_q_heads=32, num_kv_heads=8, head_dim=128)
#: bytes per element of q, k and v (bf16)
ELEMENT_BYTES = 2


def kv_bytes_per_key(geometry: Geometry, element_bytes: int = ELEMENT_BYTES) -> int:
    """K and V of one position, every KV head."""
    return 2 * geometry.num_kv_heads * geometry.head_dim * element_bytes


@dataclass(frozen=True)
class Scenario:
    """What the plan keeps, as shares: ``window_ratio`` of the keys; ``sample_ratio`` of the rows
    sampled (0: no stripes, no sampled rows); ``kept``: share of the keys left of a rank's windows
    that some row of the rank keeps, per KV head; ``key_block``: pooled keys of that many keys
    (0: no key blocks)."""

    name: str
    window_ratio: float
    sample_ratio: float
    kept: float
    key_block: int = 0


def ring_bytes(seqlen: int, world: int, geometry: Geometry = LLAMA3_8B, element_bytes: int = ELEMENT_BYTES) -> int:
    """Bytes one rank sends in ring attention (one layer's forward): ``world - 1`` chunks of k and v."""
    return (world - 1) * (seqlen // world) * kv_bytes_per_key(geometry, element_bytes)


def _pieces(seqlen: int, world: int, layout: str) -> list[list[tuple[int, int]]]:
    from .layout import SequenceLayout

    spec = SequenceLayout(layout, world, seqlen // world)
    return [spec.ranges(r) for r in range(world)]


def analytic_bytes(seqlen: int, world: int, layout: str, scenario: Scenario, geometry: Geometry = LLAMA3_8B,
                   *, element_bytes: int = ELEMENT_BYTES, cells: int = 8192) -> dict:
    """Bytes per rank of `sample_attention_cp`'s phases (the largest over ranks), from a model on a
    grid of ``cells`` cells: a receiving rank needs every key of its rows' window bands and the
    share ``kept`` of the keys left of them, each once per KV head."""
    g = geometry
    local = seqlen // world
    width = max(1, int(scenario.window_ratio * seqlen + 0.999999))
    pieces = _pieces(seqlen, world, layout)
    cell = seqlen / cells
    starts = torch.arange(cells, dtype=torch.float64) * cell
    owner = torch.zeros(cells, dtype=torch.int64)
    for r, ranges in enumerate(pieces):
        for a, b in ranges:
            owner[(starts >= a) & (starts < b)] = r
    fetched = torch.zeros(world, dtype=torch.float64)  # keys (per KV head) each rank sends
    requested = torch.zeros(world, dtype=torch.float64)
    for t, ranges in enumerate(pieces):
        band = torch.zeros(cells, dtype=torch.bool)
        for a, b in ranges:
            band |= (starts + cell > a - width) & (starts < b)
        last = max(b for _, b in ranges)
        need = torch.where(band, 1.0, torch.where(starts + cell <= last - width, scenario.kept, 0.0)).double()
        need = torch.where(owner == t, 0.0, need) * cell
        fetched += torch.zeros(world, dtype=torch.float64).index_add_(0, owner, need)
        requested[t] = need.sum()
    per_rank = {"kv_fetch": fetched * g.num_kv_heads * 2 * g.head_dim * element_bytes,
                "kv_request": requested * g.num_kv_heads * 4}
    others = world - 1
    if scenario.sample_ratio > 0:
        rows = scenario.sample_ratio * local
        columns = (scenario.kept / g.num_q_heads * g.num_kv_heads) * local  # selected per query head, about
        per_rank["sampled_q"] = torch.full((world,), rows * g.num_q_heads * g.head_dim * element_bytes * others)
        per_rank["row_lse"] = torch.full((world,), scenario.sample_ratio * seqlen * g.num_q_heads * 4 * others)
        # offers of (score, column) pairs: up to 4x the rank's selected columns (the offer grows by 4)
        per_rank["topk"] = torch.full((world,), 4 * columns * g.num_q_heads * 8 * others)
    if scenario.key_block:
        per_rank["pooled_keys"] = torch.full((world,), (local / scenario.key_block + 1) * g.num_kv_heads * g.head_dim
                                             * 4 * others)
    total = sum(per_rank.values())
    return {"seqlen": seqlen, "world": world, "layout": layout, "scenario": scenario.name,
            "max_rank_bytes": float(total.max()), "mean_rank_bytes": float(total.mean()),
            "ring_bytes": ring_bytes(seqlen, world, g, element_bytes),
            "phases": {k: float(v.max()) for k, v in per_rank.items()},
            "pairs_max_over_mean": _pair_balance(seqlen, pieces, width, scenario.kept)}


def _pair_balance(seqlen: int, pieces, width: int, kept: float) -> float:
    """Largest over mean of the computed (row, key) pairs per rank: each row keeps its window and
    about ``kept`` of the keys left of it."""
    loads = []
    for ranges in pieces:
        load = 0.0
        for a, b in ranges:
            p = torch.arange(a, b, dtype=torch.float64)
            load += float((torch.clamp(p + 1, max=width) + kept * torch.clamp(p + 1 - width, min=0)).sum())
        loads.append(load)
    return max(loads) / (sum(loads) / len(loads))


SCENARIOS = {  # measured plans at 1M (docs/benchmarks.md), see docs/distributed.md
    "sampled-w1-kept6": Scenario("paper rule, window 1%, sample 1%, kept 6%", 0.01, 0.01, 0.06),
    "sampled-w1-kept23": Scenario("paper rule, window 1%, sample 1%, kept 23%", 0.01, 0.01, 0.23),
    "block-w1-kept25": Scenario("block rule, window 1%, kept 25%", 0.01, 0.0, 0.25, key_block=128),
    "block-w1-kept100": Scenario("block rule, window 1%, kept 100%", 0.01, 0.0, 1.0, key_block=128),
}


def _counted_rank(rank: int, world: int, port: int, seqlen: int, layout: str, rule: str, out: str) -> None:
    import torch.distributed as dist

    from sampleattn import SampleAttentionConfig
    from sampleattn.rules import BlockRule
    from sampleattn.synthetic import structured_qkv

    from . import ByteCounter, sample_attention_cp, split_sequence

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    try:
        g = LLAMA3_8B
        q, k, v = structured_qkv(1, seqlen, seqlen, g.num_q_heads, g.num_kv_heads, g.head_dim,
                                 dtype=torch.bfloat16, seed=0)
        q, k, v = (split_sequence(t, layout, world, rank) for t in (q, k, v))
        selection = BlockRule(beta=0.95) if rule == "block" else "sampled"
        config = SampleAttentionConfig(alpha=0.95, window_ratio=0.04, sample_ratio=0.05, dense_below=0,
                                       selection=selection)
        counter = ByteCounter()
        _, cp_plan = sample_attention_cp(q, k, v, config, layout=layout, counter=counter, backend="torch",
                                         return_plan=True)
        density = cp_plan.plan.mean_density if cp_plan.blocks is None else None
        torch.save({"sent": dict(counter.sent), "density": density}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def counted_bytes(seqlen: int, world: int, layout: str, rule: str) -> dict:
    """Bytes each rank sent in one `sample_attention_cp` call on gloo (spawned ranks, bf16 inputs)."""
    import torch.multiprocessing as mp

    from .testing import free_port

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_counted_rank, args=(world, free_port(), seqlen, layout, rule, out), nprocs=world, join=True)
        records = [torch.load(os.path.join(out, f"{r}.pt")) for r in range(world)]
    totals = [sum(r["sent"].values()) for r in records]
    phases = sorted({p for r in records for p in r["sent"]})
    return {"seqlen": seqlen, "world": world, "layout": layout, "rule": rule, "density": records[0]["density"],
            "max_rank_bytes": max(totals), "mean_rank_bytes": sum(totals) / world,
            "ring_bytes": ring_bytes(seqlen, world),
            "phases": {p: max(r["sent"].get(p, 0) for r in records) for p in phases}}


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sampleattn.distributed.bytes", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1m,2m,4m", help="analytic lengths (1m = 2**20 tokens)")
    parser.add_argument("--worlds", default="4,8", help="ranks for the analytic table")
    parser.add_argument("--counted-length", type=int, default=4096, help="tokens of the counted CPU runs (0: none)")
    parser.add_argument("--counted-worlds", default="2,4")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    from sampleattn.lengths import parse_length

    rows = [analytic_bytes(parse_length(n), w, layout, s)
            for n in args.lengths.split(",") for w in map(int, args.worlds.split(","))
            for s in SCENARIOS.values() for layout in ("contiguous", "zigzag")]
    counted = []
    if args.counted_length:
        counted = [counted_bytes(args.counted_length, w, layout, rule)
                   for w in map(int, args.counted_worlds.split(",")) for rule in ("sampled", "block")
                   for layout in ("contiguous", "zigzag")]
    if args.format == "json":
        print(json.dumps({"analytic": rows, "counted": counted}, indent=1))
        return 0
    print("analytic, Llama-3-8B geometry, bf16, one layer, MB sent per rank (largest rank)")
    print("| tokens | ranks | plan | layout | sparse MB | ring MB | sparse / ring | pairs max/mean |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seqlen'] // 2**20}M | {r['world']} | {r['scenario']} | {r['layout']} | "
              f"{_mb(r['max_rank_bytes'])} | {_mb(r['ring_bytes'])} | {r['max_rank_bytes'] / r['ring_bytes']:.3f} | "
              f"{r['pairs_max_over_mean']:.2f} |")
    if counted:
        print("\ncounted on the CPU (gloo), same geometry, bf16, MB sent per rank (largest rank)")
        print("| tokens | ranks | rule | layout | density | sparse MB | ring MB | sparse / ring | largest phases |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in counted:
            top = sorted(r["phases"].items(), key=lambda kv: -kv[1])[:3]
            phases = ", ".join(f"{p} {_mb(b)}" for p, b in top)
            density = "-" if r["density"] is None else f"{r['density']:.3f}"
            print(f"| {r['seqlen']} | {r['world']} | {r['rule']} | {r['layout']} | {density} | "
                  f"{_mb(r['max_rank_bytes'])} | {_mb(r['ring_bytes'])} | "
                  f"{r['max_rank_bytes'] / r['ring_bytes']:.3f} | {phases} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
