"""Stage 3's traffic: each rank fetches only the keys and values its rows keep.

A rank asks each owner for the (batch, KV head, key) triples it needs (`LocalMask.needed_keys`
less its own keys), as flat indices into the owner's chunk; the owners answer with those rows of
k and v. The answer travels while the rank attends over its own keys.
"""

from __future__ import annotations

from typing import Callable

import torch

from .comm import Communicator
from .layout import SequenceLayout

__all__ = ["FetchedKeys", "fetch_keys_start"]

#: What arrived: (n, 3) int64 (batch, KV head, global key) and (n, 2, D) their key and value.
FetchedKeys = tuple[torch.Tensor, torch.Tensor]


def fetch_keys_start(k: torch.Tensor, v: torch.Tensor, need: torch.Tensor, layout: SequenceLayout,
                     comm: Communicator) -> Callable[[], FetchedKeys]:
    """Ask the owners for the needed keys and start their answer; call the result to wait for it.

    Args:
        k, v: (B, L, Hkv, D) this rank's chunk (what the others ask of it).
        need: (B, Hkv, S) bool keys this rank's rows keep; its own keys are left out here.
    """
    batch, local, nheads_kv, head_dim = k.shape
    need = need.clone()
    need[:, :, layout.positions(comm.rank, need.device)] = False
    wanted = torch.nonzero(need)  # (n, 3): batch, KV head, global key; ascending
    owner = layout.owner(wanted[:, 2])
    index_dtype = torch.int32 if batch * local * nheads_kv < 2**31 else torch.int64
    asked, requests = [], []
    for r in range(comm.world):
        rows = wanted[owner == r]
        asked.append(rows)
        flat = (rows[:, 0] * local + layout.local_index(rows[:, 2])) * nheads_kv + rows[:, 1]
        requests.append(flat.to(index_dtype))
    incoming = comm.all_to_all(requests, "kv_request")
    k_rows, v_rows = k.reshape(-1, head_dim), v.reshape(-1, head_dim)
    answers = [torch.stack([k_rows[idx.to(torch.int64)], v_rows[idx.to(torch.int64)]], dim=1) for idx in incoming]
    pending = comm.all_to_all_start(answers, "kv_fetch")

    def finish() -> FetchedKeys:
        return torch.cat(asked), torch.cat(pending.wait())

    return finish
