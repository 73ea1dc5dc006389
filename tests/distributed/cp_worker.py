"""What each spawned rank of the context-parallel tests runs (one process group per world size,
several cases per group, so that process start-up is paid once per world size)."""

from __future__ import annotations

import datetime
import os
import time
import traceback

import torch
import torch.distributed as dist

TIMEOUT_S = 20.0


def case_tensors(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole sequence's q, k, v of a case (every rank and the test make the same ones)."""
    g = torch.Generator().manual_seed(case["seed"])
    b, s, hq, hkv, d = case["batch"], case["seqlen"], case["hq"], case["hkv"], case["d"]
    q = 2.0 * torch.randn(b, s, hq, d, generator=g)
    # keys share a random direction per block of 16, so that some key blocks hold more mass than
    # others (pooled keys tell them apart), and a few strong columns stand out, as in real heads
    k = torch.randn(b, s, hkv, d, generator=g)
    k += 1.5 * torch.randn(b, -(-s // 16), hkv, d, generator=g).repeat_interleave(16, dim=1)[:, :s]
    k[:, [0, 7, 101], :, :] *= 3.0
    v = torch.randn(b, s, hkv, d, generator=g)
    return q, k, v


def _plan_record(plan) -> dict:
    record = {"window": plan.window.cpu(), "col_idx": plan.col_idx.cpu(), "col_count": plan.col_count.cpu(),
              "density": plan.density.cpu()}
    if plan.blocks is not None:
        record["blk_idx"] = plan.blocks.blk_idx.cpu()
        record["blk_count"] = plan.blocks.blk_count.cpu()
    return record


def run_cases(rank: int, world: int, port: int, cases: list[dict], out_dir: str) -> None:
    """Run every case on this rank and save what it computed as ``{case}-{rank}.pt``."""
    from sampleattn.distributed import ByteCounter, Communicator, gather_plan, sample_attention_cp, split_sequence

    if world == 3:
        # small steps, so that stage 1 scores its keys and stage 3's PyTorch path attends its rows
        # in several chunks
        from sampleattn.distributed import stage3, stripes

        stage3.STEP_ELEMENTS = stripes.STEP_ELEMENTS = 4096
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for i, case in enumerate(cases):
            record: dict = {}
            start = time.monotonic()
            try:
                if case.get("fail_rank") == rank:
                    raise RuntimeError("this rank fails before the call")
                q, k, v = (split_sequence(t, case["layout"], world, rank) for t in case_tensors(case))
                if case.get("bad_rank") == rank:
                    k = k[:, :-1]  # a refused chunk: k shorter than q
                if case.get("short_rank") == rank:
                    q, k, v = q[:, :-2], k[:, :-2], v[:, :-2]  # a valid chunk, shorter than the others'
                counter = ByteCounter()
                out, lse, cp_plan = sample_attention_cp(
                    q, k, v, case["config"], layout=case["layout"], timeout=case.get("timeout", TIMEOUT_S),
                    counter=counter, return_lse=True, return_plan=True, backend=case.get("backend", "auto"))
                record.update(out=out, lse=lse, bytes=dict(counter.sent))
                if cp_plan is not None:
                    comm = Communicator(timeout=datetime.timedelta(seconds=TIMEOUT_S))
                    record["plan"] = _plan_record(gather_plan(cp_plan, comm))
            except Exception as error:  # the test reads what each rank raised
                record["error"] = f"{type(error).__name__}: {error}"
                record["trace"] = traceback.format_exc()
            record["seconds"] = time.monotonic() - start
            torch.save(record, os.path.join(out_dir, f"{i}-{rank}.pt"))
            if case.get("fail_rank") is not None:
                return  # the group is in an undefined state after a failure: that case comes last
    finally:
        dist.destroy_process_group()
