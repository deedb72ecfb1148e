"""Reading a prepared data folder (the output of `e2urec data prepare`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from e2urec.artifacts import MANIFEST, read_json
from e2urec.data.prepare import COLUMNS, FORMAT, split_file
from e2urec.errors import E2URecError

DTYPES = {
    "id": "int64",
    "user_id": "int64",
    "item_id": "int64",
    "timestamp": "int64",
    "rating": "float64",
    "label": "int64",
    "prompt": "str",
    "target": "str",
}


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared data folder; a missing folder or manifest is one clear error."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise E2URecError(f"data folder not found: {data_dir} (run `e2urec data prepare` first)")
    manifest = read_json(data_dir / MANIFEST, what="prepared-data manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise E2URecError(f"{data_dir / MANIFEST} is not a {FORMAT} manifest")
    return manifest


def has_rows(manifest: dict[str, Any], name: str) -> bool:
    """Whether a prepared folder's manifest lists split `name` with at least one sample."""
    files = manifest.get("files", {})
    return name in manifest.get("splits", []) and bool(
        files.get(split_file(name), {}).get("samples")
    )


def split_names(data_dir: str | Path) -> list[str]:
    """The split names a prepared folder holds (train, valid, ..., sisa-K, receraser-K)."""
    return list(read_manifest(data_dir)["splits"])


def load_split(data_dir: str | Path, name: str) -> pd.DataFrame:
    """Split `name` (train|valid|test|retain|forget|sisa-K|receraser-K) as a DataFrame with
    columns id, user_id, item_id, timestamp, rating, label, prompt, target."""
    data_dir = Path(data_dir)
    names = split_names(data_dir)
    if name not in names:
        raise E2URecError(f"unknown split {name!r} in {data_dir}; valid: {', '.join(names)}")
    path = data_dir / split_file(name)
    if not path.is_file():
        raise E2URecError(f"split file missing: {path} (prepare the folder again)")
    with open(path, encoding="utf-8") as handle:
        try:
            records = [json.loads(line) for line in handle if line.strip()]
        except json.JSONDecodeError as exc:
            raise E2URecError(f"{path} is not valid JSON lines ({exc.msg})") from None
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    missing = [c for c in COLUMNS if frame[c].isna().any()] if len(frame) else []
    if missing:
        raise E2URecError(f"{path}: records lack {', '.join(missing)}")
    return frame.astype(DTYPES)
