"""`e2urec eval`: score a run on prepared splits and write RUN/metrics.json and predictions.

For each split: utility of P(Yes) (AUC, ACC at 0.5, LogLoss, n, positive rate), and with a
reference run (the Retrain run; p = reference, q = the evaluated run) the mean per-row
paper_jsd, jsd and l2 at the first answer position, on the full vocabulary (scope "vocab",
the paper's) and on the two-way Yes/No distribution (scope "yes_no"), plus the KS forget quality
(p-value of the two models' per-row answer margins; high = indistinguishable). When the forget
and holdout splits are both evaluated, "membership" holds the loss-based MIA AUC of forget rows
against the holdout users' rows, with the loss it used (`mia_loss`: yes_no), and with a reference
the reference's AUC and MUSE's PrivLeak.

metrics.json is merged by split: evaluating some splits replaces those splits' entries and
keeps the others (each entry names the data it was computed on). Per-example predictions go to
RUN/predictions/<split>.parquet (id, user_id, label, p_yes, in the split's row order).
Every input is checked before anything is written, so an error leaves the run folder as it was.
With an `AnswerLogitCache`, a reference's logits are kept after it is scored and reused by later
evaluations on the same data (also when that reference is itself the run evaluated), which gives
the same numbers without running the model again.

A reference must share the run's tokenizer vocabulary and Yes/No ids; otherwise evaluation
stops with one error rather than report only the Yes/No scope, since a reference on another
vocabulary means another backbone, which is not a Retrain of the evaluated model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from e2urec.artifacts import MANIFEST, atomic_write_bytes, atomic_write_json, read_json, sha256_file
from e2urec.data.dataset import has_rows, load_split, read_manifest
from e2urec.errors import E2URecError
from e2urec.eval import evidence, metrics
from e2urec.eval.predict import (
    AnswerLogitCache,
    Scores,
    check_same_vocabulary,
    place,
    resolve_device,
    score_rows,
)
from e2urec.quiet import quiet_transformers
from e2urec.runs import METRICS, PREDICTIONS_DIR, load_run_model, read_run_manifest

DEFAULT_SPLITS = ("test", "forget")
FORGET, HOLDOUT = "forget", "holdout"
PREDICTION_COLUMNS = ["id", "user_id", "label", "p_yes"]


def evaluate(
    run: str | Path,
    data: str | Path,
    reference: str | Path | None = None,
    splits: str | Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
    logit_cache: AnswerLogitCache | None = None,
) -> dict[str, Any]:
    """Evaluate `run` on `splits` of the prepared folder `data` (against `reference` if given).

    Writes RUN/predictions/<split>.parquet and RUN/metrics.json (merged by split), atomically,
    and returns the metrics.json content. `splits` is a list or a comma-separated string (None:
    `default_splits`, with the holdout split when the data has one); `device` defaults to CUDA
    when available. `logit_cache` keeps the reference's answer logits for later calls and serves
    the run's or the reference's when they are already held.
    """
    run, data = Path(run), Path(data)
    reference = Path(reference) if reference is not None else None
    device = resolve_device(device)
    data_sha, frames, previous = _checked_inputs(run, data, reference, splits)
    with quiet_transformers():
        model = load_run_model(run)
        ref_model = load_run_model(reference) if reference is not None else None
    if ref_model is not None:
        check_same_vocabulary(model, ref_model)
        place(ref_model, device)
    place(model, device)

    key = _cache_keys(logit_cache, (run, reference), data_sha, str(batch_size), str(device))
    entries, tables, reference_tables = {}, {}, {}
    for name, frame in frames.items():
        rows = frame[["prompt", "target"]].to_dict("records")
        keys = key(run, name), key(reference, name)
        scores = _score_split(model, ref_model, rows, name, batch_size, progress, logit_cache, keys)
        entries[name] = _split_entry(frame, scores, data, data_sha, reference)
        tables[name] = _table(frame, scores.p_yes)
        if scores.reference_p_yes is not None:
            reference_tables[name] = _table(frame, scores.reference_p_yes)
    if FORGET in reference_tables:
        entries[FORGET]["forget_quality"] = evidence.forget_quality(
            tables[FORGET], reference_tables[FORGET]
        )
    membership = _membership(tables, reference_tables)
    return _write(run, data, tables, entries, membership, previous)


def _checked_inputs(
    run: Path, data: Path, reference: Path | None, splits: str | Sequence[str] | None
) -> tuple[str, dict[str, pd.DataFrame], dict[str, Any]]:
    """Every input checked before anything is loaded or written: the data manifest's sha256,
    the split frames (none empty) and the run's earlier metrics (an e2urec metrics file)."""
    run_manifest = read_run_manifest(run)
    data_manifest = read_manifest(data)
    data_sha = sha256_file(data / MANIFEST)
    _check_data(run, run_manifest, data, data_sha)
    if reference is not None:
        ref_manifest = read_run_manifest(reference)
        run_sha, ref_sha = _data_sha(run_manifest), _data_sha(ref_manifest)
        if run_sha and ref_sha and run_sha != ref_sha:
            raise E2URecError(
                f"reference run {reference} was trained on other data than run {run} "
                f"(data manifest sha256 {ref_sha[:12]} vs {run_sha[:12]})"
            )
        _check_data(reference, ref_manifest, data, data_sha)
    if splits is None:
        splits = default_splits(data_manifest)
    names = _split_names(splits, list(data_manifest["splits"]))
    frames = {name: load_split(data, name) for name in names}
    for name, frame in frames.items():
        if frame.empty:
            raise E2URecError(f"split {name!r} in {data} is empty; nothing to evaluate")
    previous = read_json(run / METRICS, "run metrics") if (run / METRICS).exists() else {}
    if not isinstance(previous, dict) or not isinstance(previous.get("splits", {}), dict):
        raise E2URecError(f"{run / METRICS} is not an e2urec metrics file; move it away first")
    return data_sha, frames, previous


Key = tuple[str, ...]


def _cache_keys(
    logit_cache: AnswerLogitCache | None, runs: tuple[Path | None, ...], *context: str
) -> Callable[[Path | None, str], Key | None]:
    """key(run, split): the logit cache's key for a run's logits on a split (None without a
    cache or a run). A run's logits are named by its manifest (which holds its weights' sha256)
    and the `context` they were scored in (data sha256, batch size, device)."""
    digests = {
        of: sha256_file(of / MANIFEST) for of in runs if logit_cache is not None and of is not None
    }

    def key(of: Path | None, split: str) -> Key | None:
        return (digests[of], context[0], split, *context[1:]) if of in digests else None

    return key


def _score_split(
    model: Any,
    ref_model: Any,
    rows: list[dict[str, Any]],
    name: str,
    batch_size: int,
    progress: bool,
    logit_cache: AnswerLogitCache | None,
    keys: tuple[Key | None, Key | None],
) -> Scores:
    """`score_rows` of one split, served from and kept in the logit cache (`keys`: the run's and
    the reference's) where it can be."""
    run_key, ref_key = keys
    ref_logits = logit_cache.get(ref_key) if ref_key else None
    scores = score_rows(
        model,
        rows,
        batch_size,
        ref_model,
        desc=name,
        progress=progress,
        run_logits=logit_cache.get(run_key) if run_key else None,
        reference_logits=ref_logits,
        keep_reference_within=logit_cache.max_bytes if ref_key and ref_logits is None else 0,
    )
    if ref_key and scores.reference_logits is not None:
        logit_cache.put(ref_key, scores.reference_logits)
    return scores


def _table(frame: pd.DataFrame, p_yes: Any) -> pd.DataFrame:
    """The predictions table of a split: id, user_id, label and the given P(Yes)."""
    return pd.DataFrame(
        {
            "id": frame["id"].to_numpy(),
            "user_id": frame["user_id"].to_numpy(),
            "label": frame["label"].to_numpy(),
            "p_yes": p_yes,
        }
    )


def _write(
    run: Path,
    data: Path,
    tables: dict[str, pd.DataFrame],
    entries: dict[str, Any],
    membership: dict[str, Any],
    previous: dict[str, Any],
) -> dict[str, Any]:
    """Write the predictions and metrics.json (merged with `previous` by split); the result."""
    for name, table in tables.items():
        atomic_write_bytes(run / PREDICTIONS_DIR / f"{name}.parquet", _parquet_bytes(table))
    result = {
        "run": str(run.resolve()),
        "data": str(data.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "splits": {**previous.get("splits", {}), **entries},
    }
    if membership:
        result["membership"] = membership
    elif "membership" in previous and not {FORGET, HOLDOUT} & set(tables):
        result["membership"] = previous["membership"]
    atomic_write_json(run / METRICS, result)
    return result


def default_splits(data_manifest: dict[str, Any]) -> tuple[str, ...]:
    """test and forget, plus holdout (the membership evidence's non-members) when the prepared
    data has a non-empty holdout split."""
    return DEFAULT_SPLITS + ((HOLDOUT,) if has_rows(data_manifest, HOLDOUT) else ())


def _membership(
    tables: dict[str, pd.DataFrame], reference_tables: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    """MIA AUC forget vs holdout for the run (and the reference, with PrivLeak), if both given."""
    if not {FORGET, HOLDOUT} <= set(tables):
        return {}
    result: dict[str, Any] = {
        "mia_auc": evidence.membership_auc(tables[FORGET], tables[HOLDOUT]),
        "mia_loss": evidence.MIA_LOSS,
    }
    if {FORGET, HOLDOUT} <= set(reference_tables):
        reference = evidence.membership_auc(reference_tables[FORGET], reference_tables[HOLDOUT])
        result["reference_mia_auc"] = reference
        result["privleak"] = metrics.privleak(result["mia_auc"], reference)
    return result


def _data_sha(manifest: dict[str, Any]) -> str | None:
    return manifest.get("data_manifest_sha256")


def _check_data(run: Path, manifest: dict[str, Any], data: Path, data_sha: str) -> None:
    expected = _data_sha(manifest)
    if expected and expected != data_sha:
        raise E2URecError(
            f"run {run} was trained on data prepared differently than {data} "
            f"(data manifest sha256 {expected[:12]} vs {data_sha[:12]}); "
            "evaluate it on the folder it was trained on"
        )


def _split_names(splits: str | Sequence[str], valid: list[str]) -> list[str]:
    if isinstance(splits, str):
        splits = splits.split(",")
    names = list(dict.fromkeys(s.strip() for s in splits if s.strip()))
    if not names:
        raise E2URecError(f"no split to evaluate; valid: {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise E2URecError(f"unknown split(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return names


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _split_entry(
    frame: pd.DataFrame, scores: Scores, data: Path, data_sha: str, reference: Path | None
) -> dict[str, Any]:
    labels = frame["label"].to_numpy()
    entry: dict[str, Any] = {
        "n": len(frame),
        "positive_rate": float(labels.mean()),
        "auc": _number(metrics.auc(labels, scores.p_yes)),
        "acc": metrics.acc(labels, scores.p_yes),
        "logloss": metrics.logloss(labels, scores.p_yes),
        "data": str(data.resolve()),
        "data_manifest_sha256": data_sha,
    }
    if scores.distances is not None and reference is not None:
        entry["distance"] = {
            "reference": str(reference.resolve()),
            **{
                scope: {name: float(values.mean()) for name, values in by_metric.items()}
                for scope, by_metric in scores.distances.items()
            },
        }
    return entry


def _parquet_bytes(table: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def summary_lines(result: dict[str, Any], splits: str | Sequence[str] | None) -> list[str]:
    """A plain-text table of the given splits' utility and (if present) vocab-scope distances;
    None: the default splits the result holds."""
    if splits is None:
        splits = [name for name in (*DEFAULT_SPLITS, HOLDOUT) if name in result["splits"]]
    names = _split_names(splits, list(result["splits"]))
    keys = list(metrics.FORGET_METRICS)
    lines = [
        f"{'split':12s} {'n':>7s} {'pos':>6s} {'auc':>7s} {'acc':>7s} {'logloss':>8s} "
        + " ".join(f"{key:>10s}" for key in keys)
    ]
    for name in names:
        entry = result["splits"][name]
        vocab = entry.get("distance", {}).get("vocab", {})
        lines.append(
            f"{name:12s} {entry['n']:7d} {entry['positive_rate']:6.3f} "
            f"{_cell(entry['auc'], 7)} {entry['acc']:7.4f} {entry['logloss']:8.4f} "
            + " ".join(_cell(vocab.get(key), 10) for key in keys)
        )
    return lines


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.4g}"
