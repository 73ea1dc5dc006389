"""How the sequence is split over the ranks of a process group.

Two layouts, both of ``world * chunk`` rows in all:

* ``"contiguous"``: rank r holds rows ``[r * L, (r + 1) * L)``.
* ``"zigzag"``: the sequence is cut into ``2 * world`` pieces of ``L / 2`` rows and rank r holds
  pieces ``r`` and ``2 * world - 1 - r`` (an early and a late piece), the load-balanced layout of
  causal ring attention: every rank then sees about the same number of causal pairs.

Queries, keys and values are split the same way, and the output comes back in the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Layout", "SequenceLayout", "split_sequence", "join_sequence"]

Layout = Literal["contiguous", "zigzag"]


@dataclass(frozen=True)
class SequenceLayout:
    """Which global rows each rank holds.

    Attributes:
        kind: ``"contiguous"`` or ``"zigzag"``.
        world: ranks in the group.
        chunk: rows per rank (the local sequence length; even for ``"zigzag"``).
    """

    kind: Layout
    world: int
    chunk: int

    def __post_init__(self) -> None:
        if self.kind not in ("contiguous", "zigzag"):
            raise ValueError(f"layout={self.kind!r}; choose 'contiguous' or 'zigzag'")
        if self.world < 1:
            raise ValueError(f"world={self.world} must be at least 1")
        if self.chunk < 1:
            raise ValueError(f"each rank must hold at least one row; got chunk={self.chunk}")
        if self.kind == "zigzag" and self.chunk % 2:
            raise ValueError(f"the zigzag layout holds two pieces of chunk / 2 rows per rank; chunk={self.chunk} "
                             "is odd: pad the sequence to a multiple of 2 * world, or use layout='contiguous'")

    @property
    def seqlen(self) -> int:
        """Rows of the whole sequence."""
        return self.world * self.chunk

    def ranges(self, rank: int) -> list[tuple[int, int]]:
        """The half-open global row ranges of ``rank``, ascending; adjacent pieces are merged."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank={rank} is outside the group of {self.world}")
        if self.kind == "contiguous":
            return [(rank * self.chunk, (rank + 1) * self.chunk)]
        half = self.chunk // 2
        first = (rank * half, (rank + 1) * half)
        second = ((2 * self.world - 1 - rank) * half, (2 * self.world - rank) * half)
        return [(first[0], second[1])] if first[1] == second[0] else [first, second]

    def positions(self, rank: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(chunk,) int64 global row of each local row of ``rank``, ascending."""
        return torch.cat([torch.arange(a, b, device=device) for a, b in self.ranges(rank)])

    def owner(self, rows: torch.Tensor) -> torch.Tensor:
        """The rank holding each global row (int64, any shape)."""
        if self.kind == "contiguous":
            return torch.div(rows, self.chunk, rounding_mode="floor")
        piece = torch.div(rows, self.chunk // 2, rounding_mode="floor")
        return torch.where(piece < self.world, piece, 2 * self.world - 1 - piece)

    def local_index(self, rows: torch.Tensor) -> torch.Tensor:
        """Each global row's index in its owner's local chunk (int64, any shape)."""
        if self.kind == "contiguous":
            return rows - self.owner(rows) * self.chunk
        half = self.chunk // 2
        piece = torch.div(rows, half, rounding_mode="floor")
        return torch.where(piece < self.world, rows - piece * half, rows - piece * half + half)


def split_sequence(x: torch.Tensor, layout: Layout, world: int, rank: int, *, dim: int = 1) -> torch.Tensor:
    """The chunk of ``x`` (e.g. (B, S, H, D)) that ``rank`` holds, along ``dim``.

    Raises `ValueError` when ``S`` does not divide over the ranks (pad the sequence first).
    """
    seqlen = x.shape[dim]
    pieces = world * (2 if layout == "zigzag" else 1)
    if seqlen % pieces:
        raise ValueError(f"a sequence of {seqlen} rows does not split into {pieces} equal pieces "
                         f"({layout} layout over {world} ranks); pad it to a multiple of {pieces}")
    spec = SequenceLayout(layout, world, seqlen // world)
    return torch.cat([x.narrow(dim, a, b - a) for a, b in spec.ranges(rank)], dim=dim)


def join_sequence(chunks: list[torch.Tensor], layout: Layout, *, dim: int = 1) -> torch.Tensor:
    """Inverse of `split_sequence`: the whole sequence from every rank's chunk, in rank order."""
    world = len(chunks)
    spec = SequenceLayout(layout, world, chunks[0].shape[dim])
    pieces: list[tuple[int, torch.Tensor]] = []
    for rank, chunk in enumerate(chunks):
        offset = 0
        for a, b in spec.ranges(rank):
            pieces.append((a, chunk.narrow(dim, offset, b - a)))
            offset += b - a
    return torch.cat([piece for _, piece in sorted(pieces, key=lambda item: item[0])], dim=dim)
