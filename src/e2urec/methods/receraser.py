"""RecEraser: user-balanced shards, one model each, attention aggregation fitted on valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2urec.methods.base import Method, register
from e2urec.methods.ensemble import ORIGINAL_SHARDS, unlearn_ensemble


@dataclass
class RecEraserParams:
    """No settings: unlearning reuses the original ensemble's recipe (members and aggregator)."""


@ORIGINAL_SHARDS.register("receraser")
def original_shards(data_dir: Path) -> tuple[list[list[dict[str, Any]]], list[int]]:
    """The original RecEraser shards (forget users included) and their forget-sample counts.

    `data prepare` clusters only the retained users; each forgotten user (by id) joins, with all
    of its train rows, the shard whose item profile (its rows' ratings summed per item) is most
    cosine-similar to the user's ratings, among the shards that stay within the balanced size
    (train rows / shards) with that user (the smallest shard if none does; ties → lower shard).
    """
    from e2urec.data.dataset import load_split, read_manifest

    count = read_manifest(data_dir)["config"]["shards"]
    shards = [load_split(data_dir, f"receraser-{k}") for k in range(count)]
    forget = load_split(data_dir, "forget")
    items = {item: i for i, item in enumerate(load_split(data_dir, "train")["item_id"].unique())}

    def profile(frame: Any) -> np.ndarray:
        vector = np.zeros(len(items))
        np.add.at(vector, frame["item_id"].map(items).to_numpy(), frame["rating"].to_numpy())
        return vector / max(np.linalg.norm(vector), 1e-12)

    profiles = np.stack([profile(frame) for frame in shards])
    rows = [frame.to_dict("records") for frame in shards]
    counts = [0] * count
    balanced = (sum(len(part) for part in rows) + len(forget)) / count
    for _, user_rows in forget.groupby("user_id", sort=True):
        sizes = np.array([len(part) for part in rows])
        room = sizes + len(user_rows) <= balanced
        if not room.any():
            room = sizes == sizes.min()
        k = int(np.argmax(np.where(room, profiles @ profile(user_rows), -np.inf)))
        rows[k] += user_rows.to_dict("records")
        counts[k] += len(user_rows)
    for part in rows:
        part.sort(key=lambda r: r["id"])
    return rows, counts


register(
    Method(
        name="receraser",
        params=RecEraserParams,
        run=unlearn_ensemble,
        description="user-balanced shards, attention aggregation fitted on valid; retrains "
        "affected shards and the aggregator",
        source="paper",
        base_format="ensemble",
        streams=(),  # the shards, rebuilt from the base manifest
    )
)
