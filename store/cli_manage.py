"""The ``sattn-store`` commands that move data or describe the machine: ``export``, ``import``,
``delete``, ``upgrade`` and ``env``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from . import cli_view as view

__all__ = ["cmd_delete", "cmd_env", "cmd_export", "cmd_import", "cmd_upgrade"]


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    """The store (or some models) as versioned JSON, to a file or stdout."""
    with view.open_store(args) as store:
        export = store.export(args.model, include_trials=not args.no_trials)
    text = export.model_dump_json(indent=2)
    if args.output in (None, "-"):
        print(text, file=out)
        return view.EXIT_OK
    with open(args.output, "w") as handle:
        handle.write(text + "\n")
    counts = {k: len(getattr(export, k)) for k in ("models", "runs", "trials", "profiles")}
    if args.format == "json":
        print(view.to_json({"output": args.output, **counts}), file=out)
    else:
        print(f"exported {', '.join(f'{v} {k}' for k, v in counts.items())} to {args.output}", file=out)
    return view.EXIT_OK


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    """Upsert an export file (``-``: stdin) into the store; creates the store if needed."""
    from sampleattn.store.errors import ImportFormatError

    if args.file == "-":
        data: Any = sys.stdin.read()
    else:
        try:
            with open(args.file) as handle:
                data = handle.read()
        except OSError as exc:
            raise ImportFormatError(f"cannot read {args.file}: {exc.strerror}") from None
    from sampleattn.store.transfer import read_export as _read_export

    export = _read_export(data)  # validate before creating or opening anything for writing
    with view.open_store(args, write=True, create=True) as store:
        summary = store.import_(export)
    if args.format == "json":
        print(view.to_json({"store": store.url, **summary.model_dump()}), file=out)
    else:
        counts = ", ".join(f"{v} {k}" for k, v in summary.model_dump().items())
        print(f"imported {counts} into {store.url}", file=out)
    return view.EXIT_OK


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    """Delete a model's profiles (at one length / of one calibration kind)."""
    with view.open_store(args, write=True) as store:
        count = store.delete_profile(args.model, args.length, calibration_kind=args.calibration)
    if count == 0:
        print(f"sattn-store: error: no matching profile of {args.model}", file=sys.stderr)
        return view.EXIT_ERROR
    if args.format == "json":
        print(view.to_json({"model": args.model, "deleted": count}), file=out)
    else:
        print(f"deleted {count} profile{'s' if count != 1 else ''} of {args.model}", file=out)
    return view.EXIT_OK


def cmd_upgrade(args: argparse.Namespace, out: TextIO) -> int:
    """Migrate the store to the schema of this sampleattn (no-op when it is current)."""
    from sampleattn.store.migrate import HEAD_REVISION

    with view.open_store(args, write=True, create=False) as store:
        before = store.migrated_from
        url = store.url
    if args.format == "json":
        print(view.to_json({"store": url, "from": before or HEAD_REVISION, "to": HEAD_REVISION,
                     "migrated": before is not None}), file=out)
    elif before is None:
        print(f"{url}: schema {HEAD_REVISION} is current; nothing to do", file=out)
    else:
        print(f"{url}: upgraded schema {before} -> {HEAD_REVISION}", file=out)
    return view.EXIT_OK


def cmd_env(args: argparse.Namespace, out: TextIO) -> int:
    """The environment metadata a tuning run records (`sampleattn.env.collect_env`)."""
    from sampleattn.env import collect_env

    env = collect_env()
    if args.format == "json":
        print(view.to_json(env), file=out)
    else:
        print(view.pairs(list(env.items())), file=out)
    return view.EXIT_OK
