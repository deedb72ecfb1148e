"""APA deployments: `e2urec deploy` from an APA run, deletions through `apa` (only the adapters
whose shard held the user's rows retrained, exactly), the version, ledger, checks and purge, the
warm worker's model, and bad input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from small_world import prepare_small

from e2urec import api, cli
from e2urec.artifacts import sha256_file
from e2urec.backbones import load_recommender
from e2urec.data.dataset import load_split
from e2urec.deploy.deployment import Deployment
from e2urec.deploy.worker import Worker
from e2urec.errors import E2URecError
from e2urec.methods.apa import APARecipe, check_served, train_adapter, train_apa
from e2urec.mixture import ASSIGNMENT, BASE_DIR, PARTITION, VALIDATION
from e2urec.runs import load_run_model
from e2urec.train.cost import CostMeter

RECIPE = {"epochs": 1, "max_steps": 2, "neighbours": 5, "max_length": 128}
ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prepared data (4 shards) and an APA original run on t5-tiny (LoRA on q and v)."""
    root = tmp_path_factory.mktemp("apa-deploy")
    prepare_small(root)
    train_apa(root / "data", root / "apa", APARecipe(**RECIPE))
    return {"data": root / "data", "apa": root / "apa"}


def shards_of_users(run: Path, data: Path) -> dict[int, set[int]]:
    """Train user → the shards holding their rows (from the run's partition)."""
    partition = json.loads((run / ASSIGNMENT).read_text())
    shard = dict(zip(partition["ids"], partition["shards"], strict=True))
    users: dict[int, set[int]] = {}
    for row in load_split(data, "train").to_dict("records"):
        users.setdefault(int(row["user_id"]), set()).add(shard[row["id"]])
    return users


def deploy(world: dict[str, Path], out: Path, *extra: str) -> int:
    argv = ["deploy", "--from", str(world["apa"]), "--data", str(world["data"]), "--out", str(out)]
    return cli.main([*argv, *extra])


def test_a_deletion_retrains_only_the_users_shards(world, tmp_path, capsys):
    dep = tmp_path / "dep"
    assert deploy(world, dep) == 0
    deployment = Deployment(dep)
    assert deployment.settings()["purposes"] == {"privacy": ["apa"], "pollution": ["apa"]}
    v1 = deployment.version_dir("v0001")
    assert json.loads((v1 / "manifest.json").read_text())["format"] == "apa"
    assert not (v1 / PARTITION).exists()  # the centres average every train row: left out
    spans = shards_of_users(world["apa"], world["data"])
    user = min(spans, key=lambda u: (len(spans[u]), u))
    touched = sorted(spans[user])
    assert len(touched) < 4
    shard = touched[0]
    before = deployment.predict(user, [1, 2])

    assert cli.main(["forget", "--deployment", str(dep), "--users", str(user)]) == 0
    assert deployment.current() == "v0002" and deployment.versions() == ["v0002"]  # purged
    entries = api.ledger(dep)
    assert [e["kind"] for e in entries] == ["deploy", "forget", "purge"]
    entry = entries[1]
    assert entry["method"] == "apa" and len(entry["model_sha256"]) == 64
    assert entry["users"] == [deployment.keys.pseudonym(user)]
    assert 0.0 <= entry["checks"]["mia_auc"]["after"] <= 1.0
    assert entry["checks"]["valid_auc"]["after"] is not None

    v2 = deployment.version_dir("v0002")
    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["format"] == "apa" and manifest["method"] == "apa"
    assert manifest["retrained_shards"] == [f"shard-{k}" for k in touched]
    assert len(manifest["reused_shards"]) == 4 - len(touched)
    # exact: the adapter is the one training from scratch on the shard without the user gives
    partition = json.loads((world["apa"] / ASSIGNMENT).read_text())
    shard_ids = {
        i for i, s in zip(partition["ids"], partition["shards"], strict=True) if s == shard
    }
    train = load_split(world["data"], "train").to_dict("records")
    by_id = {r["id"]: r for r in train}
    rows = [by_id[i] for i in partition["ids"] if i in shard_ids and by_id[i]["user_id"] != user]
    recipe = APARecipe(**manifest["recipe"])
    scratch = tmp_path / "scratch"
    valid = load_split(world["data"], "valid").to_dict("records")
    base = load_recommender(world["apa"] / BASE_DIR)
    train_adapter(base, rows, valid, recipe, shard, scratch, tmp_path, CostMeter())
    assert sha256_file(scratch / ADAPTER) == sha256_file(
        v2 / "adapters" / f"shard-{shard}" / ADAPTER
    )
    for name in manifest["reused_shards"]:  # the others are the original's, byte for byte
        path = f"adapters/{name}/{ADAPTER}"
        assert sha256_file(v2 / path) == sha256_file(world["apa"] / path)
    # the user's valid rows left the aggregation with the store's
    kept_valid = deployment.store.counts()["valid"]
    assert load_file(v2 / VALIDATION)["log_loss"].shape == (4, kept_valid)
    assert kept_valid == sum(r["user_id"] != user for r in valid)
    assert user not in json.loads((v2 / ASSIGNMENT).read_text())["ids"]
    assert api.audit(dep, user).traces == 0
    other = next(u for u in spans if u != user)
    after = deployment.predict(other, [1, 2])
    assert all(0.0 <= p <= 1.0 for p in [*before.values(), *after.values()])


def test_the_warm_worker_serves_the_new_mixture(world, tmp_path):
    dep = tmp_path / "dep"
    assert deploy(world, dep) == 0
    deployment = Deployment(dep)
    users = sorted(shards_of_users(world["apa"], world["data"]))[:2]
    for user in users:
        deployment.enqueue([user])
    served = []
    with Worker(deployment, on_switch=lambda v, m: served.append((v, m))) as worker:
        worker.drain()
        version, model = served[-1]
        assert version == deployment.current() == "v0002"  # one coalesced pass
        rows = load_split(world["data"], "test").to_dict("records")[:6]
        batch = model.recommender.collate(rows)
        fresh = load_run_model(deployment.version_dir(version))
        with torch.no_grad():
            assert torch.allclose(model.answer_logits(batch), fresh.answer_logits(batch), atol=1e-5)
        # the base between mixed passes is a plain model: no hook is left on it
        assert not any(m._forward_hooks for m in model.model.modules())


def test_a_mixed_pass_in_another_thread_is_not_mixed(world):
    model = load_run_model(world["apa"])
    rows = load_split(world["data"], "test").to_dict("records")[:4]
    batch = model.recommender.collate(rows)
    with torch.no_grad():
        plain = model.recommender.answer_logits(batch)
    seen = []
    layer = next(iter(model.layers))

    def other_thread() -> None:
        with torch.no_grad():
            seen.append(model.recommender.answer_logits(batch))

    with model._mixing(torch.full((4, 4), 0.25)):
        assert model.model.get_submodule(layer)._forward_hooks
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert torch.equal(seen[0], plain)


def test_bad_apa_deployments(world, tmp_path, capsys):
    other = tmp_path / "other-data"
    shutil.copytree(world["data"], other)
    lines = (other / "train.jsonl").read_text().splitlines(True)
    (other / "train.jsonl").write_text("".join(lines[1:]))
    out = tmp_path / "dep"
    argv = ["deploy", "--from", str(world["apa"]), "--data", str(other), "--out", str(out)]
    for args in (
        argv,
        [*argv[:4], str(world["data"]), *argv[5:], "--method-for", "privacy=e2urec"],
    ):
        capsys.readouterr()
        assert cli.main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("e2urec: error:"), err
        assert not out.exists()
    train = load_split(world["data"], "train").to_dict("records")
    with pytest.raises(E2URecError, match="differ from the"):
        check_served(world["apa"], {}, train[1:])
    # an APA deployment unlearns through apa only
    assert deploy(world, out) == 0
    user = sorted(shards_of_users(world["apa"], world["data"]))[0]
    capsys.readouterr()
    argv = ["forget", "--deployment", str(out), "--users", str(user), "--method", "e2urec"]
    assert cli.main(argv) == 2
    assert "this deployment serves apa runs" in capsys.readouterr().err
    assert Deployment(out).current() == "v0001"
