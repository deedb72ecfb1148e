"""The demo preset fetches MovieLens-100K into the cache when it is missing (a local HTTP server
serves a small zip made here), reuses the cache, and falls back to synthetic data in one line when
offline or when the download fails."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from e2urec import api, presets
from e2urec.bench import resolve_raw
from e2urec.data import sources
from e2urec.data.readers import READERS
from e2urec.errors import E2URecError

# The tiniest bench that still runs every kind of step (cf. tests/test_bench.py).
TINY = [
    "data.last_n=400",
    "data.history_len=3",
    "data.shards=2",
    "train.epochs=1",
    "train.max_steps=1",
    "train.max_length=96",
    "method_params={neggrad: {max_steps: 1}}",
]


def ml100k_zip(ratings: int = 3000) -> bytes:
    """A small zip in the MovieLens-100K layout (ml-100k/u.data, u.item, u.user), made from the
    synthetic rating log."""
    log = READERS.get("synthetic")(None)
    rows = log.ratings.head(ratings)
    users = log.users[log.users.user_id.isin(rows.user_id)]
    data = "".join(
        f"{r.user_id}\t{r.item_id}\t{int(r.rating)}\t{r.timestamp}\n" for r in rows.itertuples()
    )
    items = "".join(
        f"{i.item_id}|{i.title}|01-Jan-1995||http://x|0|1\n" for i in log.items.itertuples()
    )
    people = "".join(
        f"{u.user_id}|30|{'F' if u.gender == 'female' else 'M'}|{u.job}|00000\n"
        for u in users.itertuples()
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, text in (("u.data", data), ("u.item", items), ("u.user", people)):
            zipped.writestr(f"ml-100k/{name}", text.encode("latin-1"))
    return buffer.getvalue()


def demo_data(**changes) -> presets.BenchData:
    data = presets.resolve("demo").data
    for key, value in changes.items():
        setattr(data, key, value)
    return data


def resolve(data: presets.BenchData, data_root: str | None = None):
    said: list[str] = []
    return resolve_raw(data, data_root, said.append), said


def test_demo_preset_fetches() -> None:
    data = presets.resolve("demo").data
    assert (data.dataset, data.fetch, data.fallback_dataset) == ("ml-100k", True, "synthetic")
    assert presets.resolve("demo", overrides=["data.fetch=false"]).data.fetch is False
    assert presets.BenchData().fetch is False  # only presets that ask for it download


def test_demo_bench_downloads_then_reuses_the_cache(serve_zip, tmp_path, monkeypatch) -> None:
    www, cache = serve_zip("ml-100k", ml100k_zip())
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        api.bench(
            "demo",
            tmp_path / "out",
            data_root=str(tmp_path / "empty-root"),
            seeds=1,
            methods=["neggrad"],
            sets=TINY,
        )
    text = log.getvalue()
    assert "downloading http://127.0.0.1:" in text and str(cache) in text
    assert "NOTE" not in text and "synthetic" not in text
    assert sources.find_cached("ml-100k") == cache / "ml-100k"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no zip or temp file left
    manifest = json.loads((tmp_path / "out" / "data" / "manifest.json").read_text())
    assert manifest["config"]["dataset"] == "ml-100k"
    assert manifest["config"]["raw"] == str(cache / "ml-100k")
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {row["method"] for row in rows} >= {"neggrad"}

    # The archive is gone from the server: a second bench uses the cache and downloads nothing.
    (www / "ml-100k.zip").unlink()
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        api.bench("demo", tmp_path / "out", seeds=1, methods=["neggrad"], sets=TINY)
    assert "downloading" not in log.getvalue() and "NOTE" not in log.getvalue()
    assert "prepare data: reused" in log.getvalue()


def test_data_root_comes_before_any_download(serve_zip, tmp_path) -> None:
    www, cache = serve_zip("ml-100k", ml100k_zip(500))
    root = tmp_path / "root"
    with zipfile.ZipFile(www / "ml-100k.zip") as zipped:
        zipped.extractall(root)
    (www / "ml-100k.zip").unlink()
    (dataset, raw), said = resolve(demo_data(), str(root))
    assert (dataset, raw, said) == ("ml-100k", root / "ml-100k", [])
    assert not cache.exists()


def test_offline_env_falls_back_in_one_line(serve_zip, monkeypatch) -> None:
    _, cache = serve_zip("ml-100k", ml100k_zip(500))
    monkeypatch.setenv("E2UREC_OFFLINE", "1")
    (dataset, raw), said = resolve(demo_data())
    assert (dataset, raw) == ("synthetic", None)
    assert len(said) == 1 and "\n" not in said[0]
    assert "E2UREC_OFFLINE is set" in said[0] and "using the synthetic dataset" in said[0]
    assert not cache.exists()
    with pytest.raises(E2URecError, match="E2UREC_OFFLINE"):  # `e2urec data fetch` too
        sources.fetch("ml-100k", progress=False)


@pytest.mark.parametrize("failure", ["unreachable", "corrupted"])
def test_failed_download_falls_back_and_leaves_no_cache(serve_zip, monkeypatch, failure) -> None:
    www, cache = serve_zip("ml-100k", ml100k_zip(500))
    if failure == "unreachable":
        monkeypatch.setenv("E2UREC_DATA_URL", "http://127.0.0.1:9/nothing")
        expected = "ml-100k not downloaded: cannot download http://127.0.0.1:9/nothing/ml-100k.zip"
    else:
        (www / "ml-100k.zip").write_bytes(b"not the archive")
        expected = "ml-100k not downloaded: checksum mismatch for ml-100k.zip"
    (dataset, raw), said = resolve(demo_data())
    assert (dataset, raw) == ("synthetic", None)
    assert len(said) == 2 and said[0].startswith("ml-100k files not found")
    assert said[1].startswith(f"NOTE: {expected}") and "\n" not in said[1]
    assert said[1].endswith("(run `e2urec data fetch ml-100k` or pass --data-root)")
    assert sources.find_cached("ml-100k") is None
    assert not cache.exists() or list(cache.iterdir()) == []


def test_without_fetch_or_fallback(serve_zip) -> None:
    _, cache = serve_zip("ml-100k", ml100k_zip(500))
    (dataset, _), said = resolve(demo_data(fetch=False))
    assert dataset == "synthetic" and "downloading" not in " ".join(said)
    assert not cache.exists()
    with pytest.raises(E2URecError, match=r"^ml-1m files not found in the download cache; run"):
        resolve(demo_data(dataset="ml-1m", fetch=False, fallback_dataset=""))


def test_failed_download_without_fallback_is_one_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(E2URecError) as info:
        resolve(demo_data(fallback_dataset=""))
    message = str(info.value)
    assert message.startswith("ml-100k not downloaded: cannot download http://127.0.0.1:9/")
    assert message.endswith("run `e2urec data fetch ml-100k` or pass --data-root FOLDER")
    assert "\n" not in message
    assert Path(tmp_path / "cache").is_dir() and list((tmp_path / "cache").iterdir()) == []
