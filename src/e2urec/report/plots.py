"""Plots (PNG, matplotlib's Agg canvas, no pyplot state): trade-off, cost, training curves,
the stream bench's residual and test AUC against requests.

`plot_tradeoff` and `plot_cost` take the frame from `e2urec.report.tables.summarise`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from e2urec.artifacts import atomic_write_bytes
from e2urec.errors import E2URecError
from e2urec.report.tables import (
    NOISE_FLOOR,
    ORIGINAL,
    RETRAIN,
    format_count,
    method_key,
    method_label,
)

DPI = 150


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _stat(summary: pd.DataFrame, method: str, column: str, stat: str = "mean") -> float:
    name = f"{column}_{stat}"
    if name not in summary.columns:
        return math.nan
    value = summary.at[method, name]
    return math.nan if pd.isna(value) else float(value)


def _require(summary: pd.DataFrame, columns: tuple[str, ...], plot: str) -> None:
    missing = [c for c in columns if f"{c}_mean" not in summary.columns]
    if summary.empty or missing:
        raise E2URecError(f"cannot draw {plot}: summary lacks {', '.join(missing) or 'rows'}")


def plot_tradeoff(summary: pd.DataFrame, path: str | Path) -> Path:
    """Forgetting (x: the residual paper-JSD when the rows have it — 1 = the Original, 0 =
    Retrain — else paper-JSD to Retrain) vs test AUC (y), one labelled point per method."""
    residual = (
        "forget_residual_jsd_mean" in summary and summary["forget_residual_jsd_mean"].notna().any()
    )
    x_col, y_col = ("forget_residual_jsd" if residual else "forget_paper_jsd"), "test_auc"
    _require(summary, (x_col, y_col), "the trade-off plot")
    figure, (axis,) = _figure(7.0, 5.0)
    methods = [m for m in summary.index if method_key(m) != NOISE_FLOOR]
    palette = [colormaps["tab20"](i) for i in (0, 6, 4, 8, 10, 12, 18, 2, 16, 14, 1, 7)]
    others = [m for m in methods if method_key(m) not in (ORIGINAL, RETRAIN)]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colours.update({m: "black" for m in methods if method_key(m) == ORIGINAL})
    colours.update({m: "grey" for m in methods if method_key(m) == RETRAIN})
    points = []
    for method in methods:
        x, y = _stat(summary, method, x_col), _stat(summary, method, y_col)
        if not (math.isnan(x) or math.isnan(y)):
            points.append((method, x, y))
    xs = [x for _, x, _ in points]
    for method, x, y in points:
        key = method_key(method)
        marker, size = {ORIGINAL: ("*", 16), RETRAIN: ("s", 9)}.get(key, ("o", 9))
        colour = colours[method]
        axis.errorbar(
            x,
            y,
            xerr=np.nan_to_num(_stat(summary, method, x_col, "std")),
            yerr=np.nan_to_num(_stat(summary, method, y_col, "std")),
            fmt=marker,
            markersize=size,
            color=colour,
            ecolor=colour,
            elinewidth=1,
            capsize=3,
        )
    floor_rows = [m for m in summary.index if method_key(m) == NOISE_FLOOR]
    floor = _stat(summary, floor_rows[0], x_col) if floor_rows else math.nan
    if not math.isnan(floor):
        xs.append(floor)
        axis.axvline(floor, color="grey", linestyle="--", linewidth=1.2)
        axis.annotate(
            "noise floor\n(Retrain vs Retrain)",
            (floor, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(5, 0),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )
    retrain_rows = [m for m in methods if method_key(m) == RETRAIN]
    if residual and retrain_rows:  # Retrain sits at residual 0: draw its utility as a line
        level = _stat(summary, retrain_rows[0], y_col)
        if not math.isnan(level):
            axis.axhline(level, color="grey", linestyle=":", linewidth=1.2)
            axis.annotate(
                "Retrain (residual 0)",
                (1.0, level),
                xycoords=("axes fraction", "data"),
                xytext=(-5, 4),
                textcoords="offset points",
                ha="right",
                fontsize=8,
                color="grey",
            )
    positive = [x for x in xs if x > 0]
    if len(positive) == len(xs) and positive and max(positive) / min(positive) > 100:
        axis.set_xscale("log")
    axis.margins(x=0.15, y=0.15)
    axis.set_xlabel(
        "forgetting: residual paper-JSD to Retrain on the forget set (1 = Original, 0 = Retrain)"
        if residual
        else "forgetting: paper-JSD to Retrain on the forget set (lower is better)"
    )
    axis.set_ylabel("test AUC (higher is better)")
    axis.set_title("Forgetting vs utility (mean ± std over seeds); better = up and to the left")
    axis.grid(True, alpha=0.3)
    _label_points(axis, [(method_label(m), x, y, method_key(m) == ORIGINAL) for m, x, y in points])
    return _save(figure, path)


# Candidate label offsets (points) around a marker, with the text alignment each needs.
LABEL_OFFSETS = [
    ((7, 5), "left"),
    ((7, -13), "left"),
    ((-7, 5), "right"),
    ((-7, -13), "right"),
    ((0, 10), "center"),
    ((0, -19), "center"),
]


def _label_points(axis, labels: list[tuple[str, float, float, bool]]) -> None:
    """Annotate each (text, x, y, bold) point at the candidate offset whose drawn text box
    overlaps the least area of the markers and of the labels already placed, and stays inside
    the axes. The layout is drawn and frozen first, so the boxes measured are the final ones."""
    figure = axis.figure
    figure.canvas.draw()
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    half = 6 * figure.dpi / 72.0  # half a marker, in pixels
    centres = [axis.transData.transform((x, y)) for _, x, y, _ in labels]
    taken = [(cx - half, cy - half, cx + half, cy + half) for cx, cy in centres]
    frame = axis.get_window_extent(renderer)
    inside = (frame.x0, frame.y0, frame.x1, frame.y1)
    for text, x, y, bold in labels:
        best = None
        for offset, align in LABEL_OFFSETS:
            annotation = axis.annotate(
                text,
                (x, y),
                xytext=offset,
                textcoords="offset points",
                ha=align,
                fontsize=9,
                fontweight="bold" if bold else "normal",
            )
            extent = annotation.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            area_of_box = (box[2] - box[0]) * (box[3] - box[1])
            outside = area_of_box - _overlap_area(box, [inside])
            area = _overlap_area(box, taken) + 10 * outside
            if best is None or area < best[0]:
                if best is not None:
                    best[1].remove()
                best = (area, annotation, box)
            else:
                annotation.remove()
        taken.append(best[2])


def _overlap_area(box: tuple[float, ...], others: list[tuple[float, ...]]) -> float:
    """Total area of `box` (left, bottom, right, top) covered by each of `others`."""
    total = 0.0
    for other in others:
        dx = min(box[2], other[2]) - max(box[0], other[0])
        dy = min(box[3], other[3]) - max(box[1], other[1])
        total += max(dx, 0.0) * max(dy, 0.0)
    return total


def _tick_label(value: float, _position: object) -> str:
    return format_count(value) if value >= 1000 else f"{value:g}"


def plot_cost(summary: pd.DataFrame, path: str | Path) -> Path:
    """Horizontal bars per method: wall time (log scale) and trainable parameters."""
    _require(summary, ("time_s",), "the cost plot")
    methods = [m for m in summary.index if method_key(m) != NOISE_FLOOR]
    labels = [method_label(m) for m in methods]
    panels = [("time_s", "wall time (s, log scale)")]
    if "trainable_params_mean" in summary.columns:
        panels.append(("trainable_params", "trainable parameters (log scale)"))
    figure, axes = _figure(5.0 * len(panels), 0.5 * len(methods) + 1.5, ncols=len(panels))
    positions = np.arange(len(methods))
    for axis, (column, title) in zip(axes, panels, strict=True):
        means = np.array([_stat(summary, m, column) for m in methods])
        stds = np.nan_to_num([_stat(summary, m, column, "std") for m in methods])
        colours = [
            "#7f7f7f" if method_key(m) in (ORIGINAL, RETRAIN) else "#1f77b4" for m in methods
        ]
        axis.barh(positions, np.nan_to_num(means), xerr=stds, color=colours, capsize=3)
        for position, value, std in zip(positions, means, stds, strict=True):
            if not math.isnan(value) and value > 0:
                text = f"{value:.3g}" if column == "time_s" else format_count(value)
                axis.annotate(
                    text,
                    (value + std, position),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                )
        if (means[~np.isnan(means)] > 0).any():
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FuncFormatter(_tick_label))
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.margins(x=0.25)
        axis.set_yticks(positions, labels if axis is axes[0] else [""] * len(labels))
        axis.invert_yaxis()
        axis.set_xlabel(title)
        axis.grid(True, axis="x", alpha=0.3)
    figure.suptitle("Cost per method (lower is better; grey = reference runs)")
    return _save(figure, path)


def read_log(log_jsonl_path: str | Path) -> list[dict]:
    """Records of a run's log.jsonl; a missing file or a malformed line is one clear error."""
    path = Path(log_jsonl_path)
    if not path.is_file():
        raise E2URecError(f"training log not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise E2URecError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise E2URecError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


NOT_CURVES = ("step", "epoch", "elapsed_s", "lr")


def plot_training_curves(log_jsonl_path: str | Path, path: str | Path) -> Path:
    """Loss curves from a run's log.jsonl: one panel per training phase (e.g. the augmented
    model, then the student), every numeric key against step; per-step values as lines,
    per-epoch values (train_loss, valid_loss) as markers. Time and learning rate are left out."""
    records = read_log(log_jsonl_path)
    phases: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for index, record in enumerate(records):
        step = record.get("step", index)
        kind = "epoch" if record.get("event") == "epoch" else "step"
        series = phases.setdefault(str(record.get("phase", "train")), {})
        for key, value in record.items():
            if key in NOT_CURVES or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                xs, ys = series.setdefault(f"{key} ({kind})" if kind == "epoch" else key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    phases = {name: series for name, series in phases.items() if series}
    if not phases:
        raise E2URecError(f"no numeric values to plot in {log_jsonl_path}")
    figure, axes = _figure(6.0 * len(phases), 4.5, ncols=len(phases))
    for axis, (phase, series) in zip(axes, phases.items(), strict=True):
        for key, (xs, ys) in sorted(series.items()):
            per_epoch = key.endswith("(epoch)")
            axis.plot(
                xs,
                ys,
                marker="o" if per_epoch or len(xs) <= 30 else None,
                markersize=5 if per_epoch else 3,
                linestyle="--" if per_epoch else "-",
                linewidth=1.4,
                label=key,
            )
        axis.set_title(phase.replace("_", " "))
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Training curves: {Path(log_jsonl_path).parent.name or 'run'}")
    return _save(figure, path)


def plot_stream(stream: dict, path: str | Path) -> Path:
    """Residual paper-JSD and test AUC against requests served, per method; the matched
    Retrain (residual 0, its test AUC) and the Original as reference lines
    (`stream`: the "stream" value of a stream bench's results.json)."""
    figure, (left, right) = _figure(9.0, 3.6, ncols=2)
    marks = [r["requests"] for r in stream["reference"]]
    left.axhline(1.0, color="grey", linestyle=":", label="Original")
    left.axhline(0.0, color="black", linestyle="--", label="matched Retrain")
    right.plot(marks, [r["retrain_test_auc"] for r in stream["reference"]], "k--",
               label="matched Retrain")  # fmt: skip
    right.plot(marks, [r["original_test_auc"] for r in stream["reference"]], ":", color="grey",
               label="Original")  # fmt: skip
    for name, result in stream["methods"].items():
        points = result["checkpoints"]
        x = [c["requests"] for c in points]
        left.plot(x, [c["residual"] for c in points], "o-", label=method_label(name))
        right.plot(x, [c["test_auc"] for c in points], "o-", label=method_label(name))
    left.set(xlabel="requests served", ylabel="residual paper-JSD (forgotten rows)")
    right.set(xlabel="requests served", ylabel="test AUC")
    right.legend(fontsize=7)
    return _save(figure, path)
