"""Shared fixtures: the real MovieLens-100K copy in ../shared, a local HTTP server, no
downloads from the internet, and small helpers."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
# A closed local port: a download that a test did not point at its own server fails at once
NO_DOWNLOADS_URL = "http://127.0.0.1:9/no-downloads-in-tests"


@pytest.fixture(scope="session", autouse=True)
def no_internet_downloads():
    """Tests never download from the internet (a bench whose preset fetches data falls back at
    once); tests that download point E2UREC_DATA_URL at `server`. E2UREC_OFFLINE is cleared so
    the fetch tests behave the same on every machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2UREC_DATA_URL", NO_DOWNLOADS_URL)
        patch.delenv("E2UREC_OFFLINE", raising=False)
        yield


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving files from tmp_path/www: (root, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def serve_zip(tmp_path, monkeypatch, server):
    """serve_zip(name, data): `server` serves `data` as dataset `name`'s zip, its spec is pinned
    to the sha256 of `data`, downloads go there and the cache is tmp_path/cache. Returns
    (folder the zip is served from, cache)."""
    from e2urec.data import sources

    root, url = server
    monkeypatch.setenv("E2UREC_DATA_URL", url)
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))

    def serve(name: str, data: bytes) -> tuple[Path, Path]:
        spec = dataclasses.replace(sources.SPECS[name], sha256=hashlib.sha256(data).hexdigest())
        monkeypatch.setitem(sources.SPECS, name, spec)
        (root / "movielens").mkdir(exist_ok=True)
        (root / "movielens" / spec.filename).write_bytes(data)
        return root / "movielens", tmp_path / "cache"

    return serve


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset prepared with the paper's protocol (last 240 samples)."""
    from e2urec import api
    from e2urec.data.prepare import PrepareConfig

    out = tmp_path_factory.mktemp("data") / "prepared"
    api.prepare(PrepareConfig(dataset="synthetic", out=str(out), last_n=240))
    return out


@pytest.fixture(scope="module")
def rows(data_dir: Path) -> dict[str, list[dict]]:
    """`data_dir`'s train, valid and test rows."""
    from e2urec.data.dataset import load_split

    return {s: load_split(data_dir, s).to_dict("records") for s in ("train", "valid", "test")}
