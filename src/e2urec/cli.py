"""The `e2urec` command line: parse arguments, call the api, turn E2URecError into one line + exit 2.

Each subcommand is a pair of functions: `add_<name>(subparsers)` declares its arguments and sets
`func` to a `run_<name>(args)` that calls into `e2urec.api`. Heavy imports happen inside the
run functions so that `e2urec --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from e2urec import __version__
from e2urec.errors import E2URecError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"e2urec: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


# ---------------------------------------------------------------- list
def add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list registered datasets, methods, backbones or presets",
        description="List what is registered: datasets (readers), methods (unlearning), "
        "backbones (model families) or presets (bench configurations).",
    )
    p.add_argument("what", choices=["datasets", "methods", "backbones", "presets"])
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> None:
    from e2urec import api

    for line in api.describe(args.what):
        print(line)


COMMANDS = [add_list]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="e2urec",
        description="Unlearning for LLM-based recommenders: prepare rating logs into LLMRec "
        "instruction data, train recommenders, serve deletion requests with E2URec and its "
        "baselines, and measure forgetting, utility and cost.",
    )
    parser.add_argument("--version", action="version", version=f"e2urec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        args.func(args)
    except E2URecError as exc:
        sys.stderr.write(f"e2urec: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("e2urec: interrupted; nothing half-written was kept\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
