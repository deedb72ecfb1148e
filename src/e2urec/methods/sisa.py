"""SISA: one model per random shard, mean of shard logits; unlearning retrains affected shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2urec.errors import E2URecError
from e2urec.methods.base import Method, register
from e2urec.methods.ensemble import ORIGINAL_SHARDS, unlearn_ensemble


@dataclass
class SISAParams:
    """No settings: unlearning reuses the original ensemble's recipe and seed, so a retrained
    shard is what training without the forget samples would have produced."""


@ORIGINAL_SHARDS.register("sisa")
def original_shards(data_dir: Path) -> tuple[list[list[dict[str, Any]]], list[int]]:
    """The original SISA shards (forget samples included) and their forget-sample counts.

    `data prepare` cuts a seeded permutation of the train split into shards and then drops the
    forget samples; the permutation does not depend on the forget set, so replaying
    `splits.sisa_shards` with nothing dropped gives the original shards. Each must equal the
    prepared shard plus its forget samples, or the data is refused.
    """
    from e2urec.data import splits
    from e2urec.data.dataset import load_split, read_manifest

    config = read_manifest(data_dir)["config"]
    train = load_split(data_dir, "train")
    forget_ids = set(load_split(data_dir, "forget")["id"])
    keep = np.zeros(len(train), dtype=bool)
    parts = splits.sisa_shards(train, keep, config["shards"], config["seed"])
    shards, counts = [], []
    for k, part in enumerate(parts):
        rows = train.iloc[part]
        prepared = set(load_split(data_dir, f"sisa-{k}")["id"])
        if set(rows["id"]) - forget_ids != prepared:
            raise E2URecError(
                f"shard sisa-{k} of {data_dir} does not match its seeded assignment; "
                "prepare the data again with this version"
            )
        shards.append(rows.to_dict("records"))
        counts.append(int(rows["id"].isin(forget_ids).sum()))
    return shards, counts


register(
    Method(
        name="sisa",
        params=SISAParams,
        run=unlearn_ensemble,
        description="random shards, one model each, mean of logits; retrains affected shards",
        source="paper",
        base_format="ensemble",
        streams=(),  # the shards, rebuilt from the base manifest
    )
)
