"""Bad input over every command, through the CLI entry point: exit code 2, exactly one
`e2urec: error:` line on stderr, no traceback, and the file system exactly as it was (every
path, size and modification time under the test's folder). Broken artifacts (truncated,
corrupted, changed or wrong weights) are among the inputs; a refused command followed by the
corrected one succeeds (nothing was left behind that blocks it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from e2urec import api, cli
from e2urec.artifacts import MANIFEST, atomic_write_json, sha256_file
from e2urec.data.dataset import load_split
from e2urec.data.prepare import PrepareConfig
from e2urec.methods import METHODS, TrainParams
from e2urec.runs import MODEL_DIR

WEIGHTS = f"{MODEL_DIR}/model.safetensors"


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _run_copy(root: Path, name: str, legacy: bool = False, **changes) -> Path:
    """A copy of the tiny run; `legacy`: its manifest without weight hashes (runs written
    before hashes were recorded)."""
    run = root / name
    shutil.copytree(root / "run", run)
    manifest = {**_manifest(run), **changes}
    if legacy:
        manifest.pop("weights_sha256")
    atomic_write_json(run / MANIFEST, manifest)
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path: Path) -> None:  # inside the tensor data: the header still parses
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _rename_tensors(path: Path) -> None:
    save_file({f"other.{k}": v for k, v in load_file(path).items()}, path)


def _misshape_tensor(path: Path) -> None:
    tensors = load_file(path)
    tensors[sorted(tensors)[0]] = torch.zeros(3, 3)
    save_file(tensors, path)


def _data_copy(root: Path, name: str, empty_forget: bool = False) -> Path:
    data = root / name
    shutil.copytree(root / "data", data)
    manifest = _manifest(data)
    if empty_forget:
        (data / "forget.jsonl").write_text("")
        manifest["files"]["forget.jsonl"]["samples"] = 0
    manifest["note"] = name  # another manifest hash: not the data the run was trained on
    atomic_write_json(data / MANIFEST, manifest)
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw and prepared tiny data, a t5-tiny run (1 step), a deployment of it, and broken or
    foreign copies of each, all under one folder."""
    root = tmp_path_factory.mktemp("bad-input")
    api.synthesize(root / "raw", n_users=40, n_items=60, n_ratings=1500, seed=0)
    config = PrepareConfig(
        dataset="synthetic",
        out=str(root / "data"),
        raw=str(root / "raw"),
        last_n=200,
        history_len=3,
        forget_strategy="least-active",
    )
    api.prepare(config)
    api.train(root / "data", "train", "t5-tiny", root / "run", epochs=1, max_steps=1, max_length=96)
    api.deploy(root / "run", root / "data", root / "dep")
    for name, damage, legacy in (
        ("truncated", _truncate, False),
        ("changed", _flip_last_byte, False),
        ("renamed", _rename_tensors, False),
        ("legacy-truncated", _truncate, True),
        ("legacy-renamed", _rename_tensors, True),
        ("legacy-misshaped", _misshape_tensor, True),
    ):
        damage(_run_copy(root, name, legacy=legacy) / WEIGHTS)
    (_run_copy(root, "no-weights") / WEIGHTS).unlink()
    _run_copy(root, "legacy", legacy=True)
    _run_copy(root, "incomplete", complete=False)
    _run_copy(root, "retrain-like", kind="retrain", trained_on="retain")
    empty = _data_copy(root, "empty-forget", empty_forget=True)
    _run_copy(root, "empty-base", data_manifest_sha256=sha256_file(empty / MANIFEST))
    _data_copy(root, "other-data")
    interrupted = root / "interrupted"
    interrupted.mkdir()
    atomic_write_json(interrupted / MANIFEST, {"complete": False})
    (root / "notes.txt").write_text("not a folder\n")
    (root / "no-manifest").mkdir()
    (root / "no-manifest" / "readme.txt").write_text("a folder that is not a run\n")
    return root


def _listing(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `root`; files with (size, mtime_ns). A folder's own mtime is left out:
    it moves when a file appears and goes again (a SQLite journal, a temp file)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        name = path.relative_to(root).as_posix()
        out[name] = None if path.is_dir() else (info.st_size, info.st_mtime_ns)
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors exit from inside main
        code = exc.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- the sweep
R = "{root}"


def unlearn(method: str = "npo", base: str = "run", data: str = "data", out: str = "out"):
    """`e2urec unlearn` arguments over folders of the world ("{root}" is filled in later)."""
    return ["unlearn", "--method", method, "--from", f"{R}/{base}", "--data", f"{R}/{data}",
            "--out", f"{R}/{out}"]  # fmt: skip


def train(*extra: str, data: str = "data", out: str = "out") -> list[str]:
    return ["train", "--data", f"{R}/{data}", "--out", f"{R}/{out}", "--max-steps", "1", *extra]


def ensemble(*extra: str, data: str = "data") -> list[str]:
    return ["train-ensemble", "--method", "sisa", "--data", f"{R}/{data}", "--out", f"{R}/out",
            "--max-steps", "1", *extra]  # fmt: skip


def evaluate(run: str, *extra: str, data: str = "data") -> list[str]:
    return ["eval", f"{R}/{run}", "--data", f"{R}/{data}", *extra]


def export(run: str, out: str = "out") -> list[str]:
    return ["export", f"{R}/{run}", "--out", f"{R}/{out}"]


def deploy(run: str, data: str = "data", out: str = "out") -> list[str]:
    return ["deploy", "--from", f"{R}/{run}", "--data", f"{R}/{data}", "--out", f"{R}/{out}"]


DEP = ["--deployment", f"{R}/dep"]
PREPARE = ["data", "prepare", "--dataset", "synthetic", "--out", f"{R}/out"]
BENCH = ["bench", "--out", f"{R}/out", "--preset"]
CHANGED = "changed after the run was written"
UNREADABLE = "cannot be read (truncated or corrupted?)"
NOT_FIT = "do not fit the model"
NO_MANIFEST = "not a run folder (no manifest.json)"
DATA_FOLDER = "not a run folder (manifest.json describes prepared data)"

CASES = {
    # train: settings, backbone, data, output
    "train negative lr": (train("--lr", "-0.001"), "lr must be positive"),
    "train nan lr": (train("--lr", "nan"), "lr must be positive"),
    "train zero epochs": (train("--epochs", "0"), "epochs must be an integer of at least 1"),
    "train negative batch": (train("--batch-size", "-4"), "batch_size must be"),
    "train zero patience": (train("--patience", "0"), "patience must be"),
    "train zero max steps": (train("--max-steps", "0"), "max_steps must be"),
    "train zero max length": (train("--max-length", "0"), "max_length must be"),
    "train missing t5 path": (train("--backbone", f"t5:{R}/no-model"), "model folder not found"),
    "train t5 without path": (train("--backbone", "t5"), "needs a model"),
    "train unknown backbone": (train("--backbone", "gpt-9"), "unknown backbone"),
    "train unknown split": (train("--on", "bogus"), "unknown split 'bogus'"),
    "train unknown finetune": (train("--finetune", "half"), "invalid choice"),
    "train missing data": (train(data="nope"), "data folder not found"),
    "train raw data": (train(data="raw"), "manifest not found"),
    "train out is a file": (train(out="notes.txt"), "not a folder"),
    "train complete out": (train(out="run"), "complete run already exists"),
    "train resume+overwrite": (train("--resume", "--overwrite"), "exclude each other"),
    "train deep out, bad lr": (train("--lr", "-1", out="a/b/c"), "lr must be positive"),
    # train-ensemble
    "ensemble negative lr": (ensemble("--lr", "-1"), "lr must be positive"),
    "ensemble zero epochs": (ensemble("--epochs", "0"), "epochs must be"),
    "ensemble missing t5 path": (ensemble("--backbone", f"t5:{R}/x"), "model folder not found"),
    "ensemble raw data": (ensemble(data="raw"), "manifest not found"),
    # unlearn: inputs other than the method's parameters
    "unlearn unknown method": (unlearn("nope"), "unknown method 'nope'"),
    "unlearn unknown setting": ([*unlearn(), "--set", "bogus=1"], "bogus"),
    "unlearn empty forget": (unlearn(base="empty-base", data="empty-forget"), "forget set"),
    "unlearn from data folder": (unlearn(base="data"), DATA_FOLDER),
    "unlearn from non-run": (unlearn(base="no-manifest"), NO_MANIFEST),
    "unlearn from missing": (unlearn(base="nope"), "run folder not found"),
    "unlearn from incomplete": (unlearn(base="incomplete"), "--resume"),
    "unlearn from retrain": (unlearn(base="retrain-like"), "not an original run"),
    "unlearn from changed": (unlearn(base="changed"), CHANGED),
    "unlearn from legacy truncated": (unlearn(base="legacy-truncated"), UNREADABLE),
    "unlearn from legacy renamed": (unlearn(base="legacy-renamed"), NOT_FIT),
    "unlearn other data": (unlearn(data="other-data"), "sha256 differs"),
    "unlearn raw data": (unlearn(data="raw"), "manifest not found"),
    "unlearn complete out": (unlearn(out="run"), "--overwrite"),
    "unlearn interrupted out": (unlearn(out="interrupted"), "interrupted run exists in"),
    # eval
    "eval truncated": (evaluate("truncated"), CHANGED),
    "eval changed": (evaluate("changed"), CHANGED),
    "eval renamed": (evaluate("renamed"), CHANGED),
    "eval weights missing": (evaluate("no-weights"), "weight file missing"),
    "eval legacy truncated": (evaluate("legacy-truncated"), UNREADABLE),
    "eval legacy renamed": (evaluate("legacy-renamed"), NOT_FIT),
    "eval legacy misshaped": (evaluate("legacy-misshaped"), "mismatched keys"),
    "eval reference misshaped": (
        evaluate("run", "--reference", f"{R}/legacy-misshaped"),
        "mismatched keys",
    ),  # fmt: skip
    "eval data folder": (evaluate("data"), DATA_FOLDER),
    "eval non-run": (evaluate("no-manifest"), NO_MANIFEST),
    "eval incomplete": (evaluate("incomplete"), "incomplete"),
    "eval bogus device": (evaluate("run", "--device", "bogus"), "unknown device 'bogus'"),
    "eval zero batch": (evaluate("run", "--batch-size", "0"), "batch size"),
    "eval unknown split": (evaluate("run", "--splits", "test,nope"), "unknown split"),
    "eval other data": (evaluate("run", data="other-data"), "prepared differently"),
    # export
    "export data folder": (export("data"), DATA_FOLDER),
    "export changed": (export("changed"), CHANGED),
    "export legacy truncated": (export("legacy-truncated"), UNREADABLE),
    "export legacy renamed": (export("legacy-renamed", out="a/b"), NOT_FIT),
    "export existing out": (export("run", out="dep"), "already exists"),
    # deploy and the deployment commands
    "deploy data folder": (deploy("data"), DATA_FOLDER),
    "deploy changed": (deploy("changed"), CHANGED),
    "deploy legacy renamed": (deploy("legacy-renamed"), NOT_FIT),
    "deploy other data": (deploy("run", data="other-data"), "not the prepared data"),
    "deploy existing out": (deploy("run", out="dep"), "already exists"),
    "forget not a deployment": (
        ["forget", "--deployment", f"{R}/data", "--users", "1"],
        "not a deployment",
    ),  # fmt: skip
    "forget unknown user": (["forget", *DEP, "--users", "999999"], "unknown user"),
    "forget bad users": (["forget", *DEP, "--users", "a,b"], "integer ids"),
    "forget negative lr": (
        ["forget", *DEP, "--users", "{user}", "--set", "lr=-1"],
        "parameter lr must be positive",
    ),  # fmt: skip
    "forget unknown request": (["forget", *DEP, "--request-id", "nope"], "no request 'nope'"),
    "forget nothing given": (["forget", *DEP], "give the users"),
    "enqueue negative lr": (
        ["forget", *DEP, "--users", "{user}", "--enqueue", "--set", "lr=-1"],
        "parameter lr must be positive",
    ),  # fmt: skip
    "work zero users": (["work", *DEP, "--once", "--max-users", "0"], "at least 1"),
    "predict unknown user": (
        ["predict", *DEP, "--user", "999999", "--items", "1"],
        "unknown user",
    ),  # fmt: skip
    "predict bad items": (["predict", *DEP, "--user", "{user}", "--items", "x"], "integer ids"),
    "ledger bad head": (["ledger", *DEP, "--expect-head", "xyz"], "is not a sha256"),
    "serve bad port": (["serve", *DEP, "--port", "70000"], "port number"),
    "serve not a deployment": (["serve", "--deployment", f"{R}/run"], "not a deployment"),
    # data
    "synthesize no users": (
        ["data", "synthesize", "--out", f"{R}/out", "--users", "0"],
        "at least 1",
    ),  # fmt: skip
    "prepare forget ratio": (
        [*PREPARE, "--raw", f"{R}/raw", "--forget-ratio", "2"],
        "forget_ratio must be in (0, 1), got 2.0",
    ),  # fmt: skip
    "prepare unknown dataset": (
        [*PREPARE, "--raw", f"{R}/raw", "--dataset", "nope"],
        "unknown dataset",
    ),  # fmt: skip
    "prepare missing raw": ([*PREPARE, "--raw", f"{R}/nope"], "not found"),
    "fetch unknown": (["data", "fetch", "nope", "--cache", f"{R}/cache"], "no download known"),
    # bench, list
    "bench unknown preset": ([*BENCH, "nope"], "unknown preset"),
    "bench negative lr": ([*BENCH, "demo", "--set", "train.lr=-1"], "train.lr must be positive"),
    "bench forget ratio": (
        [*BENCH, "demo", "--set", "data.forget_ratio=2"],
        "data.forget_ratio must be in",
    ),
    "bench method param": (
        [*BENCH, "demo", "--set", "method_params.npo.beta=0"],
        "parameter beta must be positive",
    ),  # fmt: skip
    "bench zero seeds": ([*BENCH, "demo", "--seeds", "0"], "--seeds must be at least 1"),
    "bench unknown method": ([*BENCH, "demo", "--methods", "nope"], "unknown method"),
    "list unknown": (["list", "things"], "invalid choice"),
}


def _param_cases() -> dict[str, tuple[list[str], str]]:
    """Per method: a negative learning rate and a zero batch size (trained methods), a setting
    unknown to methods without settings, and each method's own ranges."""
    cases = {}
    for name in METHODS.names():
        args = [*unlearn(name), "--set"]
        if issubclass(METHODS.get(name).params, TrainParams):
            cases[f"{name} negative lr"] = ([*args, "lr=-1e-3"], "parameter lr must be positive")
            cases[f"{name} zero batch"] = ([*args, "batch_size=0"], "parameter batch_size")
            cases[f"{name} zero epochs"] = ([*args, "epochs=0"], "epochs")
            cases[f"{name} negative decay"] = ([*args, "weight_decay=-1"], "weight_decay")
        else:
            cases[f"{name} unknown setting"] = ([*args, "lr=1"], "unknown method")
    own = {
        "neggrad": ["forget_weight=-1"],
        "bad-t": ["forget_weight=-1"],
        "npo": ["beta=0", "retain_weight=-1"],
        "e2urec": [
            "weight=2",
            "alpha=-1",
            "lora_r=0",
            "lora_dropout=1.5",
            "aug=bogus",
            "aug_lr=-1",
            "aug_epochs=0",
        ],
    }
    for name, items in own.items():
        for item in items:
            setting = item.split("=")[0]
            cases[f"{name} {item}"] = ([*unlearn(name), "--set", item], setting)
    return cases


ALL_CASES = {**CASES, **_param_cases()}


@pytest.fixture(scope="module")
def user(world: Path) -> str:
    """A user with training rows in the deployment."""
    return str(int(load_split(world / "data", "train")["user_id"].iloc[0]))


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_bad_input_is_one_line_and_changes_nothing(world, user, capsys, case):
    args, message = ALL_CASES[case]
    argv = [a.format(root=world, user=user) for a in args]
    before = _listing(world)

    code, err = run_cli(argv, capsys)

    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("e2urec: error:"), err
    assert "Traceback" not in err
    assert message in lines[0], lines[0]
    after = _listing(world)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, changed


def test_interrupted_unlearning_run_is_offered_overwrite_only(world, capsys):
    argv = [a.format(root=world) for a in unlearn("gradascent", out="interrupted")]
    code, err = run_cli(argv, capsys)
    assert code == 2 and "pass --overwrite to start again" in err and "--resume" not in err


def test_corrected_commands_succeed_after_refusals(world, capsys):
    """What the issue met: a refused train / unlearn left a run folder that blocked the
    corrected command. Now the corrected command runs."""
    out = str(world / "fixed")
    train = ["train", "--data", str(world / "data"), "--out", out, "--max-steps", "1"]
    assert run_cli([*train, "--lr", "-1"], capsys)[0] == 2
    assert run_cli([*train, "--backbone", f"t5:{world}/no-model"], capsys)[0] == 2
    assert run_cli(train, capsys)[0] == 0
    forget = [a.format(root=world) for a in unlearn("gradascent", out="fixed-unlearned")]
    forget += ["--set", "max_steps=1"]
    assert run_cli([*forget, "--set", "lr=-1"], capsys)[0] == 2
    assert run_cli(forget, capsys)[0] == 0
    manifest = _manifest(Path(out))
    assert manifest["complete"] and set(manifest["weights_sha256"]) == {WEIGHTS}


def test_runs_without_recorded_hashes_still_load(world, capsys):
    code, err = run_cli(["eval", str(world / "legacy"), "--data", str(world / "data")], capsys)
    assert code == 0, err
    assert (world / "legacy" / "metrics.json").is_file()


def test_recorded_hashes_are_the_weight_files(world):
    manifest = _manifest(world / "run")
    assert manifest["weights_sha256"] == {WEIGHTS: sha256_file(world / "run" / WEIGHTS)}
