"""The one table formatter of the package: plain aligned columns for terminals, or markdown
for pages and reports. Cells are given as text (each caller formats its own numbers)."""

from __future__ import annotations

import sys
from typing import Any, Sequence, TextIO

__all__ = ["format_table", "print_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = False,
                 align: str | None = None) -> str:
    """``headers`` and ``rows`` (one cell per header, ``str()`` of each) as one string.

    Plain: columns padded to their widest cell, two spaces apart, a line of dashes under the
    headers. ``markdown``: ``| a | b |`` lines; ``align`` gives each column ``l`` or ``r``
    (right-aligned ``---:``), default all left."""
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} headers: {row}")
    if markdown:
        align = align or "l" * len(headers)
        if len(align) != len(headers):
            raise ValueError(f"align={align!r} names {len(align)} columns for {len(headers)} headers")
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
        return "\n".join(["| " + " | ".join(headers) + " |", rule] + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def print_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = True,
                file: TextIO | None = None) -> None:
    """`format_table` printed (markdown by default: benchmark tables are pasted into pages),
    after a blank line and ``title`` when given."""
    out = file or sys.stdout
    if title:
        print(f"\n{title}", file=out)
    print(format_table(headers, rows, markdown=markdown), file=out, flush=True)
