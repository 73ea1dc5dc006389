"""Every collective of context parallelism, each with a timeout and a byte count.

A `Communicator` wraps the `torch.distributed` calls the package makes (all-gather and
all-to-all). Each call waits at most ``timeout``: a rank that raised, hangs or died makes the
others raise `ContextParallelError` within that time instead of waiting forever (after such an
error the group is in an undefined state; destroy it). Each call adds the bytes this rank sends
to a `ByteCounter`, under the name of the phase that sent them.

Bytes sent are counted as the algorithm-independent payload: an all-gather of ``n`` bytes sends
them to ``world - 1`` ranks (``n * (world - 1)``, what a ring all-gather sends per rank too); an
all-to-all sends each rank exactly what is meant for it (nothing to itself).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["ByteCounter", "Communicator", "ContextParallelError", "PendingExchange"]


class ContextParallelError(RuntimeError):
    """A collective failed or timed out, or a rank's input disagrees with the others'."""


@dataclass
class ByteCounter:
    """Bytes this rank sent, per phase (``"sampled_q"``, ``"kv_fetch"``...)."""

    sent: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, nbytes: int) -> None:
        self.sent[phase] = self.sent.get(phase, 0) + int(nbytes)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.sent.items()))
        return f"ByteCounter(total={self.total}, {parts})"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class PendingExchange:
    """An all-to-all in flight (`Communicator.all_to_all_start`); `wait` returns what arrived."""

    def __init__(self, finish: Callable[[], list[torch.Tensor]]) -> None:
        self._finish = finish

    def wait(self) -> list[torch.Tensor]:
        return self._finish()


class Communicator:
    """The collectives of one call, on ``group`` (None: the default group).

    Args:
        group: a `torch.distributed` process group (gloo for CPU tensors, NCCL for CUDA ones).
        timeout: the longest any one collective may take.
        counter: where the bytes sent are added (a fresh `ByteCounter` when None).
    """

    def __init__(self, group=None, *, timeout: datetime.timedelta, counter: ByteCounter | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                             "(gloo for CPU tensors, nccl for CUDA ones) on every rank first")
        if not isinstance(timeout, datetime.timedelta) or timeout.total_seconds() <= 0:
            raise ValueError(f"timeout={timeout!r} must be a positive datetime.timedelta")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.timeout = timeout
        self.counter = counter if counter is not None else ByteCounter()

    def _wait(self, work, what: str) -> None:
        try:
            completed = work.wait(timeout=self.timeout)
        except Exception as error:  # a timeout, or a peer that closed its connection
            raise ContextParallelError(
                f"rank {self.rank}: {what} did not complete within {self.timeout.total_seconds():g} s "
                f"({error}); another rank raised, hung or died: see its error"
            ) from error
        if completed is False:
            raise ContextParallelError(f"rank {self.rank}: {what} did not complete within "
                                       f"{self.timeout.total_seconds():g} s")

    def all_gather(self, t: torch.Tensor, phase: str) -> torch.Tensor:
        """(world, *t.shape): every rank's ``t`` (same shape and dtype on every rank), in rank order."""
        t = t.contiguous()
        if self.world == 1:
            return t.unsqueeze(0).clone()
        out = [torch.empty_like(t) for _ in range(self.world)]
        self._wait(dist.all_gather(out, t, group=self.group, async_op=True), f"all_gather ({phase})")
        self.counter.add(phase, _nbytes(t) * (self.world - 1))
        return torch.stack(out)

    def all_to_all_start(self, sends: list[torch.Tensor], phase: str) -> PendingExchange:
        """Start sending ``sends[r]`` to rank r (tensors of any length along dim 0, one trailing shape
        and dtype); the exchange's `PendingExchange.wait` returns what each rank sent here."""
        if len(sends) != self.world:
            raise ValueError(f"all_to_all needs one tensor per rank ({self.world}); got {len(sends)}")
        trailing, dtype, device = sends[0].shape[1:], sends[0].dtype, sends[0].device
        sizes = torch.tensor([s.shape[0] for s in sends], dtype=torch.int64, device=device)
        if self.world == 1:
            return PendingExchange(lambda: [sends[0].clone()])
        got_sizes = torch.empty_like(sizes)
        self._wait(dist.all_to_all_single(got_sizes, sizes, group=self.group, async_op=True),
                   f"all_to_all sizes ({phase})")
        send_rows, recv_rows = sizes.tolist(), got_sizes.tolist()
        flat_in = torch.cat([s.reshape(s.shape[0], *trailing) for s in sends]).contiguous()
        flat_out = torch.empty((sum(recv_rows), *trailing), dtype=dtype, device=device)
        work = dist.all_to_all_single(flat_out, flat_in, recv_rows, send_rows, group=self.group, async_op=True)
        row_bytes = _nbytes(flat_in[:1]) if flat_in.shape[0] else 0
        self.counter.add(phase, 8 * (self.world - 1)
                         + row_bytes * (sum(send_rows) - send_rows[self.rank]))

        def finish() -> list[torch.Tensor]:
            self._wait(work, f"all_to_all ({phase})")
            return list(torch.split(flat_out, recv_rows))

        return PendingExchange(finish)

    def all_to_all(self, sends: list[torch.Tensor], phase: str) -> list[torch.Tensor]:
        """`all_to_all_start` and wait."""
        return self.all_to_all_start(sends, phase).wait()
