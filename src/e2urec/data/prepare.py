"""`e2urec data prepare`: a rating log → the paper's LLMRec instruction data, splits and shards.

Output folder (written whole or not at all, via `staged_folder`):
  train.jsonl valid.jsonl test.jsonl retain.jsonl forget.jsonl
  shards/sisa-K.jsonl shards/receraser-K.jsonl   (K = 0 .. shards-1)
  manifest.json
Each JSONL line: id, user_id, item_id, timestamp, rating, label, prompt, target; rows in
chronological order. `id` is the sample's rank in the global chronological order of all ratings,
so it is stable across --last-n choices.

Re-running into a folder that already holds the same preparation (same config apart from paths,
same raw file hashes, same package version, outputs intact) reports it as already prepared and
changes nothing; any other existing folder is refused unless `overwrite` is set.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from e2urec import __version__
from e2urec.artifacts import (
    MANIFEST,
    atomic_write_json,
    environment_versions,
    sha256_bytes,
    sha256_file,
    staged_folder,
)
from e2urec.data import prompts, scenarios, splits
from e2urec.data.schema import RatingLog
from e2urec.data.settings import PrepareConfig  # noqa: F401  (re-exported: prepare's input)
from e2urec.errors import E2URecError

FORMAT = "e2urec-prepared-data/1"
COLUMNS = ["id", "user_id", "item_id", "timestamp", "rating", "label", "prompt", "target"]
BASE_SPLITS = ("train", "valid", "test", "retain", "forget")
HOLDOUT = "holdout"
TARGETS = {1: "Yes.", 0: "No."}


@dataclass
class PrepareResult:
    """Where the data is, its manifest, and whether an identical preparation was found there."""

    out: Path
    manifest: dict[str, Any]
    already_prepared: bool = False


def split_names(shards: int, holdout: bool = False) -> list[str]:
    """All split names of a preparation with `shards` shards (and a holdout split)."""
    return [
        *BASE_SPLITS,
        *((HOLDOUT,) if holdout else ()),
        *(f"sisa-{k}" for k in range(shards)),
        *(f"receraser-{k}" for k in range(shards)),
    ]


def split_file(name: str) -> str:
    """Relative path of split `name` inside a prepared folder."""
    return f"shards/{name}.jsonl" if name.startswith(("sisa-", "receraser-")) else f"{name}.jsonl"


def prepare(config: PrepareConfig, overwrite: bool = False) -> PrepareResult:
    """Read `config.raw` with the dataset's reader and write the prepared folder `config.out`."""
    config.validate()
    raw_files = _hash_raw(config)
    fingerprint = _fingerprint(config, raw_files)
    out = Path(config.out)
    if out.exists() and not overwrite:
        existing = _same_preparation(out, fingerprint)
        if existing is not None:
            return PrepareResult(out, existing, already_prepared=True)
        if not (out.is_dir() and not any(out.iterdir())):
            raise E2URecError(
                f"output folder {out} already holds {_describe_existing(out)}; "
                "pass --overwrite to replace it"
            )
    log = _read(config)
    frame, rows, info = build_splits(log, config)
    lines = encode_lines(frame)
    with staged_folder(out, overwrite=True) as stage:
        files = {}
        for name, positions in rows.items():
            files[split_file(name)] = write_split(
                stage, name, frame.iloc[positions], lines[positions]
            )
        manifest = {
            "format": FORMAT,
            "e2urec_version": __version__,
            "versions": environment_versions(),
            "config": dataclasses.asdict(config),
            "fingerprint": fingerprint,
            "raw_files": raw_files,
            "ratings_sha256": ratings_hash(log.ratings),
            "splits": split_names(config.shards, holdout=HOLDOUT in rows),
            "files": files,
            **info,
        }
        atomic_write_json(stage / MANIFEST, manifest)
    return PrepareResult(out, manifest)


def labelled_samples(log: RatingLog, config: PrepareConfig) -> tuple[pd.DataFrame, int, str]:
    """All kept samples in chronological order with label, prompt and target; also the number
    of samples before --last-n and the template name."""
    name = prompts.template_name(config.template, log.domain)
    template = prompts.TEMPLATES.get(name)
    ratings = log.ratings
    samples = splits.chronological_samples(
        ratings, config.history_len, config.min_history, config.last_n, config.per_user
    )
    if samples.frame.empty:
        raise E2URecError(
            f"no samples left: no rating has {config.min_history} earlier ratings by its user "
            "(lower min_history)"
        )
    titles = _titles(ratings["item_id"], log.items)
    entries = prompts.history_entries(
        titles.iloc[samples.entry_order].reset_index(drop=True),
        ratings["rating"].iloc[samples.entry_order].reset_index(drop=True),
    )
    frame = samples.frame
    frame["label"] = (frame["rating"] > 3).astype(np.int64)
    frame["prompt"] = prompts.render(
        template,
        frame["user_id"].to_numpy(),
        _titles(frame["item_id"], log.items).tolist(),
        entries,
        samples.starts,
        samples.ends,
        log.users,
    )
    frame["target"] = frame["label"].map(TARGETS)
    return frame[COLUMNS], samples.eligible, name


def build_splits(
    log: RatingLog, config: PrepareConfig
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, Any]]:
    """All kept samples (chronological, with COLUMNS; shilling's fake samples appended), each
    split's row positions into them, and manifest facts (template, counts, forgotten user ids,
    scenario)."""
    frame, eligible, name = labelled_samples(log, config)
    ratings = log.ratings
    train_slice, valid_slice, test_slice = splits.chronological_split(len(frame))
    positions = np.arange(len(frame))
    rows = {
        "train": positions[train_slice],
        "valid": positions[valid_slice],
        "test": positions[test_slice],
    }
    empty = [split for split, part in rows.items() if not len(part)]
    if empty:
        raise E2URecError(
            f"empty {', '.join(empty)} split from {len(frame)} sample(s); use more data"
        )
    scenario: dict[str, Any] = {"pollute": config.pollute}
    if config.pollute == "shilling":
        frame, rows["train"], forgotten, scenario = _inject_shilling(log, config, frame, rows)
    else:
        forgotten = splits.choose_forgotten(
            frame.iloc[rows["train"]], config.forget_ratio, config.forget_strategy, config.seed
        )
    train_users = frame["user_id"].to_numpy()[rows["train"]]
    if config.holdout_ratio > 0:
        population = frame.iloc[rows["train"]]
        if config.pollute == "shilling":  # the ratio counts real users, not injected fakes
            population = population[~population["user_id"].isin(forgotten)]
        held = scenarios.choose_holdout(population, forgotten, config.holdout_ratio, config.seed)
        held_mask = np.isin(train_users, held)
        rows[HOLDOUT] = rows["train"][held_mask]
        rows["train"] = rows["train"][~held_mask]
        train_users = train_users[~held_mask]
        scenario["holdout_users"] = held.tolist()
    forget_mask = np.isin(train_users, forgotten)
    rows["retain"] = rows["train"][~forget_mask]
    rows["forget"] = rows["train"][forget_mask]
    if not len(rows["retain"]):
        raise E2URecError("no retained samples: every train user is forgotten")
    if config.pollute == "label-flip":
        scenarios.flip_labels(frame, rows["forget"], TARGETS)
        scenario["flipped_rows"] = len(rows["forget"])
    train = frame.iloc[rows["train"]]
    for k, part in enumerate(splits.sisa_shards(train, forget_mask, config.shards, config.seed)):
        rows[f"sisa-{k}"] = rows["train"][part]
    retain = frame.iloc[rows["retain"]]
    for k, part in enumerate(splits.receraser_shards(retain, config.shards, config.seed)):
        rows[f"receraser-{k}"] = rows["retain"][part]
    info = {
        "template": name,
        "domain": log.domain,
        "counts": {
            "ratings": len(ratings),
            "users": int(ratings["user_id"].nunique()),
            "items": int(ratings["item_id"].nunique()),
            "samples_with_min_history": eligible,
            "samples_kept": len(frame),
        },
        "forgotten_users": forgotten.tolist(),
        "scenario": scenario,
        "sharding": {
            "sisa": "seeded random permutation of train samples, forget samples removed",
            "receraser": "balanced k-means on TruncatedSVD user rating vectors of retain",
        },
    }
    return frame, rows, info


def _inject_shilling(
    log: RatingLog, config: PrepareConfig, frame: pd.DataFrame, rows: dict[str, np.ndarray]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict[str, Any]]:
    """Append the fake users' samples to `frame`; return it, the train positions (real and fake,
    chronological), the fake user ids (the forget set) and the scenario facts."""
    targets = scenarios.choose_targets(frame.iloc[rows["test"]], config.targets, config.seed)
    attack = scenarios.shilling_attack(
        log,
        frame.iloc[rows["train"]],
        targets,
        config.fake_users,
        config.min_history,
        config.seed,
        config.attack,
    )
    fake_log = RatingLog(attack.ratings, log.items, attack.users, log.domain)
    fake, _, _ = labelled_samples(fake_log, dataclasses.replace(config, last_n=None))
    fake["id"] += len(log.ratings)  # after every real rating's chronological rank
    first_fake = len(frame)
    frame = pd.concat([frame, fake], ignore_index=True)
    train = np.concatenate([rows["train"], first_fake + np.arange(len(fake))])
    train = train[np.argsort(frame["timestamp"].to_numpy()[train], kind="stable")]
    scenario = {
        "pollute": "shilling",
        "attack": config.attack,
        "target_items": targets.tolist(),
        "fake_users": len(attack.fake_users),
        "fake_rows": len(fake),
        "note": "forget set = the fake users; --forget-ratio and --forget-strategy unused",
    }
    return frame, train, attack.fake_users, scenario


def encode_lines(frame: pd.DataFrame) -> np.ndarray:
    """One compact JSON object + newline per row (UTF-8 text, COLUMNS in order)."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    columns = [frame[c].tolist() for c in COLUMNS]
    lines = [
        encode(dict(zip(COLUMNS, row, strict=True))) + "\n" for row in zip(*columns, strict=True)
    ]
    return np.array(lines, dtype=object)


def write_split(
    folder: Path, name: str, frame: pd.DataFrame, lines: np.ndarray | None = None
) -> dict[str, Any]:
    """Write split `name` (`frame`'s rows as JSON lines, `encode_lines` unless given) into
    `folder`; returns its manifest record: sha256 and `split_stats`."""
    lines = encode_lines(frame) if lines is None else lines
    data = "".join(lines.tolist()).encode("utf-8")
    path = folder / split_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"sha256": sha256_bytes(data), **split_stats(frame)}


def ratings_hash(ratings: pd.DataFrame) -> str:
    """sha256 of the loaded ratings (user, item, rating, timestamp), whatever the raw format."""
    columns = ratings[["user_id", "item_id", "rating", "timestamp"]]
    return sha256_bytes(pd.util.hash_pandas_object(columns, index=False).to_numpy().tobytes())


def split_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Samples, distinct users and positive rate of a split."""
    return {
        "samples": len(frame),
        "users": int(frame["user_id"].nunique()),
        "positive_rate": round(float(frame["label"].mean()), 6) if len(frame) else None,
    }


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text table: split, samples, users, positive rate (base splits and shards)."""
    lines = [f"{'split':14s} {'samples':>9s} {'users':>7s} {'positive':>9s}"]
    for name in manifest["splits"]:
        stats = manifest["files"][split_file(name)]
        rate = "-" if stats["positive_rate"] is None else f"{stats['positive_rate']:.3f}"
        lines.append(f"{name:14s} {stats['samples']:9d} {stats['users']:7d} {rate:>9s}")
    return "\n".join(lines)


def _titles(item_ids: pd.Series, items: pd.DataFrame) -> pd.Series:
    lookup = items.drop_duplicates("item_id").set_index("item_id")["title"].astype(str)
    titles = item_ids.map(lookup)
    missing = titles.isna()
    if missing.any():
        titles = titles.astype(object)
        titles[missing] = "Item " + item_ids[missing].astype(str)
    return titles.astype(str)


def _read(config: PrepareConfig) -> RatingLog:
    from e2urec.data.readers import READERS

    reader = READERS.get(config.dataset)
    return reader(None if config.raw is None else Path(config.raw))


def _hash_raw(config: PrepareConfig) -> dict[str, str]:
    if config.raw is None:
        return {}
    raw = Path(config.raw)
    if raw.is_file():
        return {raw.name: sha256_file(raw)}
    if not raw.is_dir():
        raise E2URecError(f"--raw not found: {raw}")
    return {p.name: sha256_file(p) for p in sorted(raw.iterdir()) if p.is_file()}


def _fingerprint(config: PrepareConfig, raw_files: dict[str, str]) -> str:
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "raw")}
    for name in _inactive_scenario_fields(config):  # the paper's protocol keeps its fingerprint
        del identity[name]
    payload = {"config": identity, "raw": raw_files, "version": __version__, "format": FORMAT}
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode("utf-8"))


def _inactive_scenario_fields(config: PrepareConfig) -> list[str]:
    inactive = [] if config.pollute == "shilling" else ["targets", "fake_users", "attack"]
    if config.pollute == "none":
        inactive.append("pollute")
    if config.holdout_ratio == 0:
        inactive.append("holdout_ratio")
    return inactive


def _same_preparation(out: Path, fingerprint: str) -> dict[str, Any] | None:
    manifest = _load_manifest(out)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return None
    for rel, stats in manifest.get("files", {}).items():
        path = out / rel
        if not path.is_file() or sha256_file(path) != stats.get("sha256"):
            return None
    return manifest


def _load_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _describe_existing(out: Path) -> str:
    if not out.is_dir():
        return "a file, not a folder"
    manifest = _load_manifest(out)
    if manifest is None:
        return "other files (no prepared-data manifest)"
    config = manifest.get("config", {})
    return (
        f"a different preparation (dataset {config.get('dataset')}, seed {config.get('seed')}, "
        "or modified files)"
    )
