"""What the `e2urec` subcommands share: the parser whose usage errors are one line, a subcommand
declared from its run function, and the arguments many commands take."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"e2urec: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def command(
    sub: argparse._SubParsersAction, run: Callable, summary: str, name: str | None = None
) -> argparse.ArgumentParser:
    """Subcommand `name` (default: `run`'s name after "run_", "_" read as "-") that calls
    `run(args)`: `summary` is its line in the parent's --help, `run`'s docstring its
    description."""
    name = name or run.__name__.removeprefix("run_").replace("_", "-")
    p = sub.add_parser(name, help=summary, description=" ".join((run.__doc__ or "").split()))
    p.set_defaults(func=run)
    return p


def add_output(p: argparse.ArgumentParser, metavar: str = "RUN", text: str = "") -> None:
    """The required --out folder and --overwrite (replace an existing one)."""
    p.add_argument("--out", required=True, metavar=metavar, help=text or "run folder to write")
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing {metavar}")


def add_sets(p: argparse.ArgumentParser, text: str) -> None:
    """Repeatable --set KEY=VALUE items (args.sets)."""
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help=text)


def names(value: str) -> list[str]:
    """A comma-separated list of names."""
    return [v.strip() for v in value.split(",") if v.strip()]
