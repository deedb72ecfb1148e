"""The stream bench's report: the table of each checkpoint against its matched Retrain, the
per-request latency table, and the plot (`plots.plot_stream`).

Input: a results.json holding `{"stream": ...}` as `e2urec.stream` writes it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from e2urec.artifacts import atomic_write_json, atomic_write_text
from e2urec.report.plots import plot_stream
from e2urec.report.tables import method_label

PHASES = (
    ("queue_s", "queue"),
    ("unlearn_s", "unlearning"),
    ("checks_s", "checks"),
    ("publish_s", "write + publish"),
    ("total_s", "total"),
)


def is_stream(results: Any) -> bool:
    """Whether a results.json value is a stream bench's."""
    return isinstance(results, dict) and isinstance(results.get("stream"), dict)


def _number(value: Any, places: int) -> str:
    return "–" if value is None or value != value else f"{value:.{places}f}"


def checkpoint_table(stream: dict[str, Any]) -> str:
    """Markdown: per method and checkpoint, residual paper-JSD on the rows forgotten so far,
    test AUC (and its gap to the matched Retrain), PrivLeak and drift on retained users."""
    lines = [
        "| method | requests | residual JSD | test AUC | AUC − matched Retrain | PrivLeak "
        "| drift vs Retrain | drift vs Original |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reference = {r["requests"]: r for r in stream["reference"]}
    for r in stream["reference"]:
        lines.append(
            f"| Original | {r['requests']} ({r['forgotten_rows']} rows) | 1.00 | "
            f"{_number(r['original_test_auc'], 4)} | "
            f"{_number(r['original_test_auc'] - r['retrain_test_auc'], 4)} | "
            f"{_number(r['original_privleak'], 3)} | – | 0 |"
        )
    for r in stream["reference"]:
        lines.append(
            f"| matched Retrain | {r['requests']} | 0 | {_number(r['retrain_test_auc'], 4)} | 0 "
            "| 0 | 0 | – |"
        )
    for name, result in stream["methods"].items():
        for c in result["checkpoints"]:
            gap = c["test_auc"] - reference[c["requests"]]["retrain_test_auc"]
            lines.append(
                f"| {method_label(name)} | {c['requests']} | {_number(c['residual'], 2)} | "
                f"{_number(c['test_auc'], 4)} | {_number(gap, 4)} | "
                f"{_number(c['privleak'], 3)} | {_number(c['drift_retrain'], 4)} | "
                f"{_number(c['drift_original'], 4)} |"
            )
    return "\n".join(lines) + "\n"


def latency_table(stream: dict[str, Any]) -> str:
    """Markdown: per method, P50 / P95 / max seconds of each phase of a request, and unlearning
    over the target 2 × one gradient pass over the user's rows + 0.3 s (P95)."""
    header = " | ".join(label for _, label in PHASES)
    lines = [
        f"| method | train rows (P50 / max) | {header} | one gradient pass | unlearning ÷ "
        "target (P95) |",
        "|---|---:|" + "---:|" * (len(PHASES) + 2),
    ]
    for name, result in stream["methods"].items():
        rows = [r["rows"] for r in result["requests"]]
        latency = result["latency"]
        cells = [_spread(latency[key]) for key, _ in PHASES]
        lines.append(
            f"| {method_label(name)} | {statistics.median(rows):g} / {max(rows)} | "
            f"{' | '.join(cells)} | {_spread(latency['gradient_pass_s'])} | "
            f"{_number(latency['unlearn_over_target']['p95'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def _spread(stats: dict[str, Any]) -> str:
    return " / ".join(_number(stats[k], 2) for k in ("p50", "p95", "max"))


def to_markdown(results: dict[str, Any]) -> str:
    """The stream bench's report as Markdown: what ran, the checkpoint and latency tables."""
    stream = results["stream"]
    intro = (
        f"Stream of {stream['requests']} single-user requests ({stream['purpose']}, preset "
        f"{stream['preset']}, seed {stream['seed']}), each served alone by the deployment's "
        f"worker; checkpoints after {', '.join(map(str, stream['checkpoints']))} requests, each "
        "against a Retrain without exactly the users forgotten so far (same recipe and seed).\n"
    )
    latency = (
        "\nLatency per request in seconds, P50 / P95 / max (wall clock, one worker, requests "
        "in a row):\n\n"
    )
    return intro + "\n" + checkpoint_table(stream) + latency + latency_table(stream)


def write(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, results.md and plots/stream.png into `out`; returns them by name."""
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", to_markdown(results))
    return {
        "results.json": out / "results.json",
        "results.md": out / "results.md",
        "stream.png": plot_stream(results["stream"], out / "plots" / "stream.png"),
    }
