"""What the ``sattn-store`` commands share: exit codes, opening the store, and text formatting
(cells, tables, key-value pairs, JSON)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3


def open_store(args: argparse.Namespace, *, write: bool = False, create: bool = False) -> Any:
    from sampleattn.store.store import ProfileStore

    return ProfileStore(args.store, readonly=not write, create=create)


def length_arg(text: str) -> int:
    from sampleattn.lengths import parse_length

    try:
        return parse_length(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from sampleattn.tables import format_table

    return format_table(headers, [[fmt(v) for v in row] for row in rows])


def pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in pairs)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def dump(record: Any) -> Any:
    return record.model_dump(mode="json")


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def length_text(tokens: int | None) -> str:
    from sampleattn.lengths import format_length

    return "-" if tokens is None else format_length(tokens)


def mode_and_params(config: Any, length: int) -> tuple[str, Any, Any, Any]:
    """The MODE column and ALPHA, WINDOW, SAMPLE (``-`` under dense, where they do nothing)."""
    from sampleattn.store.display import is_dense, selection_mode, sparse_params

    dense = is_dense(config, length)
    return (selection_mode(config, dense), *sparse_params(config, dense))


def overrides_text(profile: Any) -> str:
    layers = profile.config.layers
    heads = sum(len(o.heads) for o in layers.values())
    return f"{len(layers)}L/{heads}H" if layers else "-"
