"""Result tables: per-run rows → per-method mean ± std → `results.csv`, `summary.csv`, `results.md`.

A row is a dict with `method`, `seed` and metric columns (`forget_paper_jsd`, `test_auc`,
`time_s`, ...). Three method names are reference rows rather than unlearning methods and are
placed at the top: `noise_floor` (a metric between two Retrain runs of different seeds),
`original` and `retrain` (matched case-insensitively, spaces or dashes for underscores).
Bold marks the best mean per column among the unlearning methods only, in the direction that
`e2urec.eval.metrics.metric_info` declares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from e2urec.artifacts import atomic_write_text, read_json
from e2urec.errors import E2URecError
from e2urec.eval.metrics import metric_info

NOISE_FLOOR = "noise_floor"
ORIGINAL = "original"
RETRAIN = "retrain"
REFERENCE_ORDER = (NOISE_FLOOR, ORIGINAL, RETRAIN)
LABELS = {
    NOISE_FLOOR: "noise floor (Retrain vs Retrain)",
    ORIGINAL: "Original",
    RETRAIN: "Retrain",
}


def _significant(digits: int) -> Callable[[float], int]:
    """Decimals that show `digits` significant digits of a mean (std gets the same decimals)."""

    def decimals(mean: float) -> int:
        if mean == 0 or not math.isfinite(mean):
            return digits
        return min(8, max(0, digits - 1 - math.floor(math.log10(abs(mean)))))

    return decimals


def _fixed(places: int) -> Callable[[float], int]:
    return lambda mean: places


def format_count(value: float) -> str:
    """A parameter count in short form: 1.23M, 600K, 7B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


# (column, header, decimals for a given mean) in the paper's layout plus the forgetting evidence;
# None: a count (K/M/B). Columns no row has a value for (e.g. target P(Yes) outside shilling)
# are left out of the Markdown table.
TABLE_COLUMNS: tuple[tuple[str, str, Callable[[float], int] | None], ...] = (
    ("forget_paper_jsd", "forget paper-JSD", _significant(4)),
    ("forget_residual_jsd", "residual JSD", _fixed(2)),
    ("forget_residual_auc", "residual AUC_f", _fixed(2)),
    ("forget_quality", "KS p", _fixed(3)),
    ("forget_privleak", "PrivLeak", _fixed(3)),
    ("test_auc", "test AUC", _fixed(4)),
    ("utility_recovery", "AUC recovery", _fixed(2)),
    ("target_p_yes", "target P(Yes)", _fixed(3)),
    ("test_acc", "ACC", _fixed(4)),
    ("test_logloss", "LogLoss", _fixed(4)),
    ("time_s", "time (s)", _fixed(1)),
    ("time_ratio", "time ÷ Retrain", _significant(3)),
    ("peak_memory_mb", "peak memory (MB)", _fixed(0)),
    ("trainable_params", "trainable params", None),
)


def method_key(method: str) -> str:
    """Canonical form of a method name: lower case, underscores for spaces and dashes."""
    return str(method).strip().lower().replace(" ", "_").replace("-", "_")


def is_reference(method: str) -> bool:
    """True for the noise floor, Original and Retrain rows (not unlearning methods)."""
    return method_key(method) in REFERENCE_ORDER


def method_label(method: str) -> str:
    """Display name: fixed labels for reference rows, the method name otherwise."""
    return LABELS.get(method_key(method), str(method))


def summarise(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-method `n_seeds`, `<metric>_mean` and `<metric>_std` (sample std; nan for one seed).

    The index is the method name; reference rows come first (noise floor, Original, Retrain),
    then the other methods in order of first appearance. Non-numeric columns are dropped.
    """
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise E2URecError("no result rows to summarise")
    if "method" not in frame.columns or frame["method"].isna().any():
        raise E2URecError("every result row needs a 'method'")
    metrics = [
        column
        for column in frame.columns
        if column not in ("method", "seed") and pd.api.types.is_numeric_dtype(frame[column])
    ]
    grouped = frame.groupby("method", sort=False)
    summary = pd.DataFrame({"n_seeds": grouped.size()})
    for column in metrics:
        summary[f"{column}_mean"] = grouped[column].mean()
        summary[f"{column}_std"] = grouped[column].std(ddof=1)
    rank = {key: position for position, key in enumerate(REFERENCE_ORDER)}
    order = sorted(
        range(len(summary)),
        key=lambda i: (rank.get(method_key(summary.index[i]), len(rank)), i),
    )
    summary = summary.iloc[order]
    summary.index.name = "method"
    return summary


def _cell(summary: pd.DataFrame, method: str, column: str, decimals: Callable | None) -> str:
    mean = summary.at[method, f"{column}_mean"] if f"{column}_mean" in summary else math.nan
    if pd.isna(mean):
        return "–"
    if decimals is None:
        text = format_count(mean)
        pct = summary.at[method, "trainable_pct_mean"] if "trainable_pct_mean" in summary else None
        return text if pct is None or pd.isna(pct) else f"{text} ({pct:.3g}%)"
    places = decimals(mean)
    text = f"{mean:.{places}f}"
    std = summary.at[method, f"{column}_std"]
    if summary.at[method, "n_seeds"] > 1 and not pd.isna(std):
        text += f" ± {std:.{places}f}"
    return text


def best_methods(summary: pd.DataFrame, column: str) -> set[str]:
    """Unlearning methods holding the best mean in `column`.

    Empty when fewer than two methods compete or all of them tie (nothing stands out).
    """
    means = summary.get(f"{column}_mean")
    if means is None:
        return set()
    candidates = means[[not is_reference(m) for m in summary.index]].dropna()
    if len(candidates) < 2:
        return set()
    info = metric_info(column)
    if info.ideal is not None:
        candidates = (candidates - info.ideal).abs()
        best = candidates.min()
    else:
        best = candidates.max() if info.higher_is_better else candidates.min()
    winners = {m for m, value in candidates.items() if math.isclose(value, best, rel_tol=1e-12)}
    return winners if len(winners) < len(candidates) else set()


def to_markdown(summary: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """The summary as a Markdown table in the paper's layout, best unlearning method in bold;
    `columns` (names of TABLE_COLUMNS) picks and orders the columns, default all that hold a
    value."""
    specs = {spec[0]: spec for spec in TABLE_COLUMNS}
    unknown = [c for c in columns or () if c not in specs]
    if unknown:
        raise E2URecError(f"unknown table column {unknown[0]!r}; valid: {', '.join(specs)}")
    columns = [
        specs[name]
        for name in (columns or specs)
        if f"{name}_mean" in summary and summary[f"{name}_mean"].notna().any()
    ]
    headers = ["method", *(header for _, header, _ in columns), "seeds"]
    best = {column: best_methods(summary, column) for column, *_ in columns}
    lines = [
        "| " + " | ".join(headers) + " |",
        "|---" + "|---:" * (len(headers) - 1) + "|",
    ]
    for method in summary.index:
        cells = [method_label(method).replace("|", "\\|")]
        for column, _, decimals in columns:
            text = _cell(summary, method, column, decimals)
            cells.append(f"**{text}**" if method in best[column] else text)
        cells.append(str(int(summary.at[method, "n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LEGEND = (
    "Cells: mean ± std over seeds (mean alone for one seed). Forgetting metrics compare each "
    "method with Retrain (same seed) on the forget set. paper-JSD and residuals: lower is better "
    "(residual = distance ÷ the Original's: 1 = forgot nothing, 0 = Retrain; on the noise-floor "
    "row, the floor in the same units). KS p: TOFU forget quality, higher = indistinguishable "
    "from Retrain. PrivLeak: MUSE's, 0 ideal, negative = forget rows still recognisable as "
    "members against holdout users' rows. AUC recovery: share of the test-AUC gap between the "
    "polluted Original and the clean Retrain regained (1 = all). **Bold**: best unlearning "
    "method per column (reference rows excluded; PrivLeak: closest to 0).\n"
)


def write_tables(
    rows: Iterable[Mapping[str, Any]], out_dir: str | Path, notes: str = ""
) -> dict[str, Path]:
    """Write `results.csv` (one line per run), `summary.csv` and `results.md` (the table, the
    legend and `notes`), atomically."""
    rows = list(rows)
    summary = summarise(rows)
    out_dir = Path(out_dir)
    paths = {
        "results_csv": out_dir / "results.csv",
        "summary_csv": out_dir / "summary.csv",
        "results_md": out_dir / "results.md",
    }
    atomic_write_text(paths["results_csv"], pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(paths["summary_csv"], summary.to_csv())
    text = to_markdown(summary) + "\n" + LEGEND + (f"\n{notes}" if notes else "")
    atomic_write_text(paths["results_md"], text)
    return paths


def render_results(path: str | Path, columns: Sequence[str] | None = None) -> str:
    """The Markdown table of a bench's `results.json` (PATH, or a folder holding it), with the
    signal check's paragraph when `signal.json` lies beside it (a stream bench's results: its
    tables, `report.stream`): what `e2urec report` prints."""
    from e2urec.report import stream
    from e2urec.report.forgetting import signal_text

    path = Path(path)
    results = path / "results.json" if path.is_dir() else path
    rows = read_json(results, "results file")
    if stream.is_stream(rows):
        return stream.to_markdown(rows)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise E2URecError(f"results file must hold a list of result rows: {results}")
    text = to_markdown(summarise(rows), columns)
    signal = results.parent / "signal.json"
    if signal.is_file():
        text += "\n" + signal_text(read_json(signal, "signal file"))
    return text
