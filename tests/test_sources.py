"""`e2urec data fetch`: a local HTTP server (conftest `server`) serves zips made here;
checksums, cache, offline."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from e2urec.cli import main
from e2urec.data import sources
from e2urec.data.readers import READERS
from e2urec.errors import E2URecError

RATINGS = "1::1::5::978300760\n2::1::3::978302109\n"
USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"
MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n"


def ml1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("ml-1m/", "")
        zipped.writestr("ml-1m/ratings.dat", RATINGS)
        zipped.writestr("ml-1m/users.dat", USERS)
        zipped.writestr("ml-1m/movies.dat", MOVIES)
        zipped.writestr("ml-1m/README", "fixture")
        zipped.writestr("../escape.dat", "outside")
        zipped.writestr("ml-1m/nested/deep.dat", "nested")
    return buffer.getvalue()


@pytest.fixture
def env(serve_zip):
    """Cache in tmp_path, downloads from the local server, ml-1m pinned to the fixture zip."""
    return serve_zip("ml-1m", ml1m_zip())


def test_fetch_downloads_verifies_and_unzips(env):
    _, cache = env
    assert sources.find_cached("ml-1m") is None
    folder = sources.fetch("ml-1m", progress=False)
    assert folder == cache / "ml-1m" == sources.find_cached("ml-1m")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README",
        "movies.dat",
        "ratings.dat",
        "users.dat",
    ]
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m"]  # no zip or temp file left
    assert not (cache.parent / "escape.dat").exists()
    assert len(READERS.get("ml-1m")(None).ratings) == 2


def test_fetch_uses_the_cache_without_network(env, monkeypatch):
    sources.fetch("ml-1m", progress=False)
    monkeypatch.setenv("E2UREC_DATA_URL", "http://127.0.0.1:9/nothing")
    assert sources.fetch("ml-1m", offline=True) == sources.find_cached("ml-1m")


def test_corrupted_download_leaves_nothing(env):
    www, cache = env
    good = (www / "ml-1m.zip").read_bytes()
    (www / "ml-1m.zip").write_bytes(good[:-10] + b"corrupted!")
    with pytest.raises(E2URecError, match="checksum mismatch for ml-1m.zip") as info:
        sources.fetch("ml-1m", progress=False)
    assert "\n" not in str(info.value)
    assert list(cache.iterdir()) == []
    assert sources.find_cached("ml-1m") is None


def test_missing_member_leaves_nothing(env, monkeypatch):
    www, cache = env
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("ml-1m/ratings.dat", RATINGS)
    data = buffer.getvalue()
    (www / "ml-1m.zip").write_bytes(data)
    spec = dataclasses.replace(sources.SPECS["ml-1m"], sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(sources.SPECS, "ml-1m", spec)
    with pytest.raises(E2URecError, match="lacks ml-1m/users.dat, movies.dat"):
        sources.fetch("ml-1m", progress=False)
    assert list(cache.iterdir()) == []


def test_offline_and_unreachable_say_where_to_put_files(env, monkeypatch):
    _, cache = env
    with pytest.raises(E2URecError) as info:
        sources.fetch("ml-1m", offline=True)
    message = str(info.value)
    assert "--offline" in message and str(cache / "ml-1m.zip") in message
    assert str(cache / "ml-1m" / "users.dat") in message
    monkeypatch.setenv("E2UREC_DATA_URL", "http://127.0.0.1:9/nothing")
    with pytest.raises(E2URecError, match=r"cannot download .*by hand"):
        sources.fetch("ml-1m", progress=False)
    assert list(cache.iterdir()) == []


def test_http_error_is_one_line(env):
    (env[0] / "ml-1m.zip").unlink()
    with pytest.raises(
        E2URecError, match=r"cannot download .*ml-1m\.zip \(HTTP 404 .*\); download"
    ):
        sources.fetch("ml-1m", progress=False)


def test_zip_placed_by_hand_is_checked_and_used(env, monkeypatch):
    www, cache = env
    monkeypatch.setenv("E2UREC_DATA_URL", "http://127.0.0.1:9/nothing")
    for name, data in (("good", (www / "ml-1m.zip").read_bytes()), ("junk", b"junk")):
        (cache / name).mkdir(parents=True)
        (cache / name / "ml-1m.zip").write_bytes(data)
    assert sources.fetch("ml-1m", cache=cache / "good", offline=True) == cache / "good" / "ml-1m"
    with pytest.raises(E2URecError, match="checksum mismatch"):
        sources.fetch("ml-1m", cache=cache / "junk", offline=True)
    assert [p.name for p in (cache / "junk").iterdir()] == ["ml-1m.zip"]


def test_cli_fetch(env, capsys):
    _, cache = env
    assert main(["data", "fetch", "ml-1m", "--offline"]) == 2
    assert "--offline" in capsys.readouterr().err
    assert main(["data", "fetch", "ml-1m", "--cache", str(cache / "alt")]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "alt" / "ml-1m")
    assert main(["data", "fetch", "ml-25m"]) == 2
    assert "valid: ml-100k, ml-1m" in capsys.readouterr().err


def test_specs_are_pinned_and_unknown_names_rejected(monkeypatch, tmp_path):
    for spec in sources.SPECS.values():
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    monkeypatch.delenv("E2UREC_DATA_URL", raising=False)
    assert sources.dataset_url("ml-100k") == (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    )
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "c"))
    assert sources.cache_dir() == Path(tmp_path / "c")
    with pytest.raises(E2URecError, match="valid: ml-100k, ml-1m"):
        sources.find_cached("netflix")
