"""Metric-like numbers in the docs' prose that no committed results file holds, and the docs' word
count outside generated blocks.

Prose is README.md and docs/**/*.md with generated blocks, HTML comments, fenced code and inline
code removed. A number is metric-like when it has decimals (0.68, −0.12), a percent sign (22%) or a
× suffix (1.54×). It is backed when some value in a results file that the same page renders in a generated block
(with signal.json beside each results.json) rounds to it at the decimals it is printed with (a
percentage also as a share: 22% ← 0.22). A page without generated blocks backs no number.
`python tools/doccheck.py` lists the unbacked ones and the word count; tests/test_docs.py bounds
both.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRIP = (
    re.compile(r"<!-- generated: .*?<!-- end generated -->", re.DOTALL),
    re.compile(r"<!--.*?-->", re.DOTALL),
    re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE),
    re.compile(r"`[^`]+`"),
    re.compile(r"\]\([^)]*\)"),  # link targets (paths, anchors)
)
NUMBER = re.compile(r"(?<![\w.])([−-]?)(\d+(?:\.\d+)?)(%|×)?(?![\w])")
WORDS_BUDGET = 12_000
UNBACKED_BUDGET = 10


def prose(text: str) -> str:
    """`text` without generated blocks, comments, code and link targets."""
    for pattern in STRIP:
        text = pattern.sub(" ", text)
    return text


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def word_count(root: Path = REPO) -> int:
    """Words of docs/ outside generated blocks (comments and code count: a reader reads them)."""
    block = STRIP[0]
    return sum(len(block.sub(" ", p.read_text("utf-8")).split()) for p in pages(root)[1:])


def cited_files(text: str, root: Path = REPO) -> list[Path]:
    """The results files `text`'s generated blocks render, with the signal.json beside each."""
    paths = {root / p for p in re.findall(r"<!-- generated: \w+ (docs/results/\S+\.json)", text)}
    paths |= {p.parent / "signal.json" for p in paths if (p.parent / "signal.json").is_file()}
    return sorted(paths)


def values_in(paths: list[Path]) -> list[float]:
    """Every number in the JSON files `paths`."""
    values: list[float] = []

    def walk(node: object) -> None:
        if isinstance(node, bool):
            return
        if isinstance(node, (int, float)):
            values.append(float(node))
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in paths:
        walk(json.loads(path.read_text(encoding="utf-8")))
    return values


def metric_numbers(text: str) -> Iterator[tuple[str, float, int, str]]:
    """(as printed, value, decimals, suffix) of each metric-like number in `text`'s prose."""
    for match in NUMBER.finditer(prose(text)):
        sign, digits, suffix = match.group(1), match.group(2), match.group(3) or ""
        if "." not in digits and not suffix:
            continue
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        value = float(digits) * (-1 if sign else 1)
        yield match.group(0), value, decimals, suffix


def backed(value: float, decimals: int, suffix: str, values: list[float]) -> bool:
    """Whether a committed value prints as `value` at `decimals` (a percentage also as a share)."""
    scales = (1.0, 100.0) if suffix == "%" else (1.0,)
    return any(
        round(v * scale, decimals) in (value, abs(value)) for v in values for scale in scales
    )


def unbacked(root: Path = REPO) -> list[str]:
    """`page:line: number` for each metric-like number in prose that no results file holds."""
    found = []
    for path in pages(root):
        text = path.read_text(encoding="utf-8")
        values = values_in(cited_files(text, root))
        for printed, value, decimals, suffix in metric_numbers(text):
            if not backed(value, decimals, suffix, values):
                found.append(f"{path.relative_to(root)}: {printed}")
    return found


def main() -> int:
    missing, words = unbacked(), word_count()
    print("\n".join(missing))
    print(f"{len(missing)} unbacked metric-like numbers (budget {UNBACKED_BUDGET})")
    print(f"{words} words in docs/ outside generated blocks (budget {WORDS_BUDGET})")
    return 0 if len(missing) <= UNBACKED_BUDGET and words <= WORDS_BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
