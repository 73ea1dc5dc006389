"""``sattn-store``: inspect, export, import and upgrade the profile store.

    sattn-store list                                 the profiles, one line each
    sattn-store show MODEL [--length 32k]            a model's profiles, or the one a length gets
    sattn-store pareto MODEL --length 32k [--plot out.png]
    sattn-store runs [--model MODEL]                 the tuning runs
    sattn-store export [-o FILE] [--model MODEL]     the store as versioned JSON
    sattn-store import FILE                          upsert an export into the store
    sattn-store delete MODEL [--length 32k]          delete profiles
    sattn-store upgrade                              migrate the store to this version's schema
    sattn-store env                                  the environment metadata a run records

Options (before or after the command): ``--store URL`` (a SQLAlchemy URL or a SQLite file path;
default ``$SAMPLEATTN_STORE``, else ``profiles.sqlite`` in the user cache folder,
``$SAMPLEATTN_CACHE`` or ``$XDG_CACHE_HOME/sampleattn`` on Linux) and
``--format table|json``.

Exit codes: 0 success; 1 not found or operational error (no such store, model, profile or
trial; cannot connect; invalid import); 2 usage error (bad arguments, a length that does not
parse); 3 schema or corruption error (a store from a newer sampleattn, an older one that needs
``sattn-store upgrade``, a damaged file).

Only ``import``, ``delete`` and ``upgrade`` write; every other command opens the store read-only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from .cli_manage import cmd_delete, cmd_env, cmd_export, cmd_import, cmd_upgrade
from .cli_read import cmd_list, cmd_pareto, cmd_runs, cmd_show
from .cli_view import EXIT_ERROR, EXIT_OK, EXIT_SCHEMA, EXIT_USAGE, length_arg

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_SCHEMA", "EXIT_USAGE", "build_parser", "main"]


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--store`` and ``--format`` work before or after the command)."""
    def common() -> argparse.ArgumentParser:
        # A fresh parent per parser: parents share their action objects, and the subcommands'
        # SUPPRESS defaults must not overwrite a value given before the command.
        options = argparse.ArgumentParser(add_help=False)
        options.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                             help="SQLAlchemy URL or SQLite file path (default: $SAMPLEATTN_STORE, "
                                  "else profiles.sqlite in $SAMPLEATTN_CACHE or the user cache folder)")
        options.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                             help="output format (default: table)")
        return options

    parser = argparse.ArgumentParser(
        prog="sattn-store",
        description="Inspect, export, import and upgrade the SampleAttention profile store.",
        epilog="exit codes: 0 ok, 1 not found or operational error, 2 usage error, 3 schema or corrupt store",
        parents=[common()],
    )
    parser.set_defaults(store=None, format="table")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace, TextIO], int], help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common()], help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    calib = {"choices": ("real", "synthetic"), "default": None, "help": "only profiles of this calibration kind"}
    sub = add("list", cmd_list, "list the profiles")
    sub.add_argument("--model", default=None, help="only this model")
    sub.add_argument("--calibration", **calib)

    sub = add("show", cmd_show, "show a model's profiles and runs, or the profile a length gets")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=length_arg, default=None, help="sequence length (32k, 96k, 1m, 32768)")
    sub.add_argument("--allow-synthetic", action="store_true",
                     help="use profiles tuned on synthetic calibration data when no real one exists")

    sub = add("pareto", cmd_pareto, "the non-dominated trials (error vs latency) of a model at one length")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=length_arg, required=True, help="tuned length (32k, 96k, 1m, 32768)")
    sub.add_argument("--run", default=None, help="only the trials of this run")
    sub.add_argument("--calibration", **{**calib, "help": "only runs of this calibration kind"})
    sub.add_argument("--plot", metavar="PNG", default=None, help="also plot the trials and the front to this PNG")

    sub = add("runs", cmd_runs, "list the tuning runs")
    sub.add_argument("--model", default=None, help="only this model")

    sub = add("export", cmd_export, "write the store as versioned JSON")
    sub.add_argument("-o", "--output", metavar="FILE", default=None, help="output file (default: stdout)")
    sub.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    sub.add_argument("--no-trials", action="store_true", help="leave the trials out")

    sub = add("import", cmd_import, "upsert an export into the store (creates the store if needed)")
    sub.add_argument("file", metavar="FILE", help="an export file, or - for stdin")

    sub = add("delete", cmd_delete, "delete a model's profiles")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("--length", type=length_arg, default=None, help="only the profile at this length")
    sub.add_argument("--calibration", **calib)

    add("upgrade", cmd_upgrade, "migrate the store to this sampleattn's schema")
    add("env", cmd_env, "print the environment metadata a tuning run records")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``sattn-store``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    out = out if out is not None else sys.stdout
    from sampleattn.store.errors import StoreError

    try:
        return args.handler(args, out)
    except StoreError as exc:
        print(f"sattn-store: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # invalid content (pydantic), e.g. a hand-edited row
        print(f"sattn-store: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `sattn-store export | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
