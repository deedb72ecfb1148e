"""`e2urec bench --stream N`: single-user requests through the deployment pipeline, measured
at checkpoints against matched-prefix Retrains; the report renders it; bad input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from test_bench import TINY

from e2urec import api, cli
from e2urec.errors import E2URecError
from e2urec.stream import checkpoints, order_users, percentiles

METHODS = ["e2urec", "neggrad"]


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("stream")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("E2UREC_CACHE", str(root / "cache"))
    with (root / "stderr.txt").open("w") as handle, contextlib.redirect_stderr(handle):
        result = api.bench(
            "demo", root / "out", data_root=str(root), methods=METHODS, sets=TINY, stream=3
        )
    monkeypatch.undo()
    return root / "out", result


def test_stream_measures_every_checkpoint_against_its_matched_retrain(stream_run) -> None:
    out, result = stream_run
    stream = json.loads((out / "results.json").read_text())["stream"]
    assert stream["checkpoints"] == [1, 2, 3] and len(stream["users"]) == 3
    assert stream["users"] == order_users(stream["users"], 0)
    for k in (1, 2, 3):  # the matched Retrain trained without exactly the first k users
        forgotten = json.loads((out / "stream" / f"prefix-{k}" / "manifest.json").read_text())
        assert forgotten["forgotten_users"] == sorted(stream["users"][:k])
        assert (out / "runs" / f"retrain-prefix{k}" / "model").is_dir()
    assert [r["requests"] for r in stream["reference"]] == [1, 2, 3]
    for name in METHODS:
        method = stream["methods"][name]
        assert [c["requests"] for c in method["checkpoints"]] == [1, 2, 3]
        for c in method["checkpoints"]:
            assert c["residual"] >= 0 and 0 <= c["test_auc"] <= 1 and c["drift_retrain"] >= 0
        assert [r["user"] for r in method["requests"]] == stream["users"]
        for request in method["requests"]:
            assert request["rows"] > 0 and request["unlearn_s"] > 0
            assert request["total_s"] >= request["unlearn_s"] + request["checks_s"]
        assert method["latency"]["total_s"]["p95"] >= method["latency"]["total_s"]["p50"]
    assert not list((out / "stream").glob("dep-*"))  # the copies are removed
    assert result.files["stream.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = api.report(out)
    assert "matched Retrain" in report and "write + publish" in report and "neggrad" in report


def test_rerun_reuses_the_streams(stream_run, capsys: pytest.CaptureFixture) -> None:
    out, _ = stream_run
    before = json.loads((out / "results.json").read_text())
    api.bench("demo", out, data_root=str(out.parent), methods=METHODS, sets=TINY, stream=3)
    assert capsys.readouterr().err.count("reused") >= 2 + 3 + len(METHODS)
    assert json.loads((out / "results.json").read_text()) == before


def test_helpers_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert checkpoints(40) == [10, 20, 30, 40] and checkpoints(2) == [1, 2]
    assert checkpoints(8, [0.25]) == [2, 8]
    with pytest.raises(E2URecError, match="stream.fractions"):
        checkpoints(8, [0, 2])
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0 and percentiles([])["max"] is None
    users = list(range(20))
    assert order_users(users, 1) == order_users(users[::-1], 1) != order_users(users, 2)
    with pytest.raises(E2URecError, match="at least 1 request"):
        checkpoints(0)
    args = ["bench", "--preset", "demo", "--out", str(tmp_path / "o"), "--stream", "2"]
    assert cli.main([*args, "--methods", "nosuch"]) != 0
    assert "nosuch" in capsys.readouterr().err
