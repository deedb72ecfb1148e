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


doccheck = docgen._tool("doccheck")


def test_an_inline_value_renders_one_number_from_a_results_file(tmp_path: Path) -> None:
    spec = "value docs/results/demo/results.json method=e2urec column=test_auc"
    page = tmp_path / "page.md"
    page.write_text(f"E2URec reaches <!-- generated: {spec} -->0<!-- end generated --> AUC.\n")
    text, stale = docgen.refresh(page)
    rows = json.loads((DEMO / "results.json").read_text())
    auc = next(r["test_auc"] for r in rows if r["method"] == "e2urec")
    assert stale == [spec] and f"-->{auc:.4f}<!--" in text
    signal = "value docs/results/demo/signal.json key=seeds.0.ratio_to_floor places=1"
    assert (
        docgen.render(signal)
        == f"{json.loads((DEMO / 'signal.json').read_text())['seeds'][0]['ratio_to_floor']:.1f}"
    )


def test_the_choose_page_is_generated_and_linked_from_the_readme_first_screen() -> None:
    page = (REPO / "docs" / "choose.md").read_text(encoding="utf-8")
    assert "<!-- generated: choose -->\n| setting |" in page
    first_screen = "\n".join((REPO / "README.md").read_text(encoding="utf-8").splitlines()[:30])
    assert "(docs/choose.md)" in first_screen


def test_prose_cites_no_metric_that_no_results_file_holds() -> None:
    unbacked = doccheck.unbacked()
    assert len(unbacked) <= doccheck.UNBACKED_BUDGET, unbacked


def test_a_typed_metric_is_caught_and_a_rendered_one_is_not(tmp_path: Path) -> None:
    (tmp_path / "docs" / "results" / "r").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "r" / "results.json").write_text(
        '[{"method": "a", "x": 0.6789}]'
    )
    cite = "<!-- generated: value docs/results/r/results.json method=a column=x -->0.68<!-- end generated -->"
    (tmp_path / "README.md").write_text(f"cited {cite}; typed 0.68 and 0.91 and 3.5× and `0.77`\n")
    assert doccheck.unbacked(tmp_path) == ["README.md: 0.91", "README.md: 3.5×"]


def test_docs_stay_within_their_word_budget() -> None:
    assert doccheck.word_count() <= doccheck.WORDS_BUDGET


@pytest.mark.parametrize("page", docgen.pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_docs_read_as_reference_not_as_a_diary(page: Path) -> None:
    text = doccheck.prose(page.read_text(encoding="utf-8")).lower()
    for phrase in ("transcribed record", "issue ", "session", "helper", "this release", "/tmp"):
        assert phrase not in text, (page, phrase)


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
