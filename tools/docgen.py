"""Generated blocks in README.md and docs/: tables rendered from committed results files, the CLI
reference from the argparse parser, every method's parameters from the registry.

A block is an HTML comment pair around generated Markdown:

    <!-- generated: KIND [ARG ...] -->
    ...
    <!-- end generated -->

Kinds:
    results PATH [columns=a,b]  a bench's results.json (+ signal.json beside it), as `e2urec report`
    choose                      the choose-a-method table (tools/choose.py)
    cli                         every `e2urec` subcommand with its arguments
    methods                     every registered method with its parameters and defaults

and one inline kind, for a value cited in prose (no line break after the opening comment):

    <!-- generated: value PATH method=M column=C -->0.68<!-- end generated -->
    <!-- generated: value PATH key=seeds.0.ratio_to_floor places=1 -->87.0<!-- end generated -->

the mean over seeds of a results.json column, printed as its table prints it, or one value of a
JSON file at a dotted key, with `places` decimals.

`python tools/docgen.py` rewrites every stale block in place; `--check` changes nothing and exits 1
naming each stale block (tests/test_docs.py and `mkdocs build` run the check). PATHs are relative
to the repository root.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<spec>[^\n]*?) -->\n?)(?P<body>.*?)(?P<close><!-- end generated -->)",
    re.DOTALL,
)


def pages(root: Path = REPO) -> list[Path]:
    """The Markdown files that may hold blocks: README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def render(spec: str, root: Path = REPO) -> str:
    """The Markdown a block of `spec` ("KIND ARG ...") holds."""
    kind, *args = spec.split()
    options = dict(a.split("=", 1) for a in args if "=" in a)
    paths = [a for a in args if "=" not in a]
    if kind == "results" and len(paths) == 1:
        return render_results(paths[0], options.get("columns"), root)
    if kind == "value" and len(paths) == 1:
        return render_value(root / paths[0], options)
    if kind == "choose" and not args:
        return _tool("choose").render_choose(root)
    if kind == "cli" and not args:
        return render_cli()
    if kind == "methods" and not args:
        return render_methods()
    raise ValueError(f"unknown generated block {spec!r}")


def _tool(name: str):
    """A module of tools/ by file (the docs build does not put tools/ on the import path)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_results(path: str, columns: str | None, root: Path) -> str:
    from e2urec.report.tables import render_results as table

    text = table(root / path, columns.split(",") if columns else None)
    return f"{text}\n*Rendered from `{path}` by `e2urec report`.*\n"


def render_value(path: Path, options: dict[str, str]) -> str:
    """One number from a results file, inline (see the module's docstring)."""
    from e2urec.report.tables import TABLE_COLUMNS, summarise

    data = json.loads(path.read_text(encoding="utf-8"))
    if "key" in options:
        for part in options["key"].split("."):
            data = data[int(part)] if isinstance(data, list) else data[part]
        return f"{float(data):.{int(options.get('places', 2))}f}"
    column = options["column"]
    mean = float(summarise(data).at[options["method"], f"{column}_mean"])
    decimals = dict((name, rule) for name, _, rule in TABLE_COLUMNS).get(column)
    places = int(options["places"]) if "places" in options else decimals(mean) if decimals else 2
    return f"{mean:.{places}f}"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every (sub)subcommand parser under `parser`, depth first, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subcommands(sub)


def _prose(text: str | None) -> str:
    """Help text as one Markdown line: whitespace collapsed, `<` shown rather than read as HTML."""
    return " ".join((text or "").split()).replace("<", "&lt;")


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        value = f" {action.metavar or action.dest.upper()}" if action.nargs != 0 else ""
        names = ", ".join(f"`{o}{value}`" for o in action.option_strings)
    else:
        names = f"`{action.metavar or action.dest}`"
    text = _prose(action.help).replace("|", "\\|")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    if action.required and action.option_strings:
        text += " **required**"
    return f"| {names} | {text} |"


def render_cli() -> str:
    """One section per subcommand: its description and a table of its arguments."""
    from e2urec.cli import build_parser

    parts = []
    root = build_parser()
    for sub in [root, *_subcommands(root)]:
        actions = [
            a
            for a in sub._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        ]
        parts.append(f"## `{sub.prog}`\n\n{_prose(sub.description)}\n")
        if actions:
            rows = "\n".join(_argument_row(a) for a in actions)
            parts.append(f"| argument | meaning |\n|---|---|\n{rows}\n")
        else:
            parts.append("Subcommands are listed below.\n")
    return "\n".join(parts)


def _settings_table(cls: type, exclude: tuple[str, ...] = ()) -> str:
    """A settings dataclass as a Markdown table (from the declarations, as `e2urec list methods`)."""
    from e2urec.config import setting_rows

    def cell(text: str) -> str:
        return _prose(text).replace("|", "\\|")

    rows = [
        f"| `{name}` | {cell(kind)} | `{default}` | {cell(text)} |"
        for name, kind, default, text in setting_rows(cls, exclude)
    ]
    return "| parameter | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def render_methods() -> str:
    """Every registered method: where it comes from, what it does, a table of its parameters,
    then the trainer options every training method takes (as `e2urec list methods` shows)."""
    from e2urec.methods import METHODS
    from e2urec.train.options import TrainOptions
    from e2urec.unlearn import NO_PARAMS, option_names

    shared = tuple(option_names())
    parts = []
    for name in METHODS.names():
        method = METHODS.get(name)
        parts.append(f"**`{name}`**: {method.description} *(source: {method.source})*.\n")
        table = _settings_table(method.params, shared)
        if issubclass(method.params, TrainOptions):
            table += "\nand the trainer options below.\n"
        parts.append(table if table.count("\n") > 2 else f"{NO_PARAMS.capitalize()}.\n")
    parts.append("**Trainer options** of every method that trains (and of `e2urec train`):\n")
    parts.append(_settings_table(TrainOptions))
    return "\n".join(parts)


def refresh(path: Path, root: Path = REPO) -> tuple[str, list[str]]:
    """`path`'s text with every block regenerated, and the specs of the blocks that changed."""
    text = path.read_text(encoding="utf-8")
    stale: list[str] = []

    def replace(match: re.Match) -> str:
        body = render(match["spec"], root)
        if body != match["body"]:
            stale.append(match["spec"])
        return match["open"] + body + match["close"]

    return BLOCK.sub(replace, text), stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail on a stale block, write none")
    args = parser.parse_args(argv)
    failed = False
    for path in pages():
        text, stale = refresh(path)
        for spec in stale:
            print(f"{path.relative_to(REPO)}: stale block `{spec}`", file=sys.stderr)
        if stale and args.check:
            failed = True
        elif stale:
            path.write_text(text, encoding="utf-8")
    if failed:
        print("run `python tools/docgen.py` (or `make docs`) to regenerate", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
