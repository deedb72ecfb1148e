"""The docs cannot drift: generated blocks match their sources, the CLI reference lists every
subcommand and flag, and `e2urec report` renders a results.json (bad input in one line)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from e2urec import cli

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "docs" / "results" / "demo"


def load_docgen():
    spec = importlib.util.spec_from_file_location("docgen", REPO / "tools" / "docgen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docgen = load_docgen()


@pytest.mark.parametrize("page", docgen.pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_generated_block_matches_its_source(page: Path) -> None:
    _, stale = docgen.refresh(page)
    assert not stale, f"{page}: stale {stale}; run `make docs`"


def test_readme_stays_short_and_shows_the_demo_table() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "<!-- generated: results docs/results/demo/results.json" in text
    assert "noise floor (Retrain vs Retrain)" in text and "Signal check" in text


def test_cli_reference_lists_every_subcommand_and_flag() -> None:
    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    pending = [cli.build_parser()]
    seen = 0
    while pending:
        parser = pending.pop()
        assert f"## `{parser.prog}`" in page, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in page.split(f"## `{parser.prog}`")[1], (parser, option)
        seen += 1
    assert seen > 15


def test_a_changed_results_file_makes_its_table_stale(tmp_path: Path) -> None:
    root = tmp_path
    (root / "docs" / "r").mkdir(parents=True)
    for name in ("results.json", "signal.json"):
        shutil.copy(DEMO / name, root / "docs" / "r" / name)
    spec = "results docs/r/results.json columns=test_auc,forget_residual_jsd"
    page = root / "docs" / "page.md"
    page.write_text(f"# t\n\n<!-- generated: {spec} -->\nold\n<!-- end generated -->\n")
    (root / "README.md").write_text("# r\n")
    text, stale = docgen.refresh(page, root)
    assert stale == [spec] and "| method | test AUC | residual JSD | seeds |" in text
    page.write_text(text)
    assert docgen.refresh(page, root)[1] == []
    rows = json.loads((root / "docs" / "r" / "results.json").read_text())
    next(r for r in rows if r["method"] == "e2urec")["test_auc"] = 0.123456
    (root / "docs" / "r" / "results.json").write_text(json.dumps(rows))
    fresh, stale = docgen.refresh(page, root)
    assert stale == [spec] and "0.1235" in fresh


def test_a_record_needs_as_many_cells_as_columns(tmp_path: Path) -> None:
    record = tmp_path / "r.yaml"
    record.write_text("source: x\ncolumns: [a, b]\nrows:\n  - [1, 2]\n  - [3]\n")
    with pytest.raises(ValueError, match="2 cells"):
        docgen.render_record(record)
    record.write_text("source: measured at abc\ncolumns: [a, b]\nrows:\n  - [1, 2]\n")
    assert docgen.render_record(record).startswith("| a | b |\n|---|---:|\n| 1 | 2 |\n")


def test_report_prints_the_table_of_a_results_folder(capsys) -> None:
    assert cli.main(["report", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| method |") and "Signal check" in out
    assert cli.main(["report", str(DEMO / "results.json"), "--columns", "test_auc"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| method | test AUC | seeds |"


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "results file not found"),
        ("{not json", [], "results file is not valid JSON"),
        ('{"rows": 1}', [], "must hold a list of result rows"),
        ("[]", [], "no result rows"),
        (None, ["--columns", "test_auc,nope"], "unknown table column 'nope'"),
    ],
)
def test_report_refuses_bad_input_in_one_line(tmp_path, capsys, content, args, message) -> None:
    folder = tmp_path / "run"
    if content is not None:
        folder.mkdir()
        (folder / "results.json").write_text(content)
    target = DEMO if "--columns" in args else folder
    assert cli.main(["report", str(target), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("e2urec: error:")
