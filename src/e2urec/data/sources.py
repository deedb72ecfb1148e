"""Downloadable datasets: pinned specs, a checksum-verified download cache and an offline mode.

The cache is `$E2UREC_CACHE` (default `~/.cache/e2urec`); a fetched dataset lives unzipped in
`<cache>/<name>/`. Downloads come from `$E2UREC_DATA_URL` (default the GroupLens server) +
`/<file>`, stream to a temporary file, are checked against the pinned sha256 and are unzipped into
a staging folder that is renamed into place only when complete, so an interrupted or corrupted
download leaves nothing in the cache. A zip placed by hand at `<cache>/<file>` is used (after the
same check) instead of downloading. `$E2UREC_OFFLINE=1` (or `offline=True`) never downloads.

The pinned sha256 values were not computed here from a fresh download: they are the values that
several independent public projects publish for these GroupLens archives (each also matches the
archive's official md5 in those sources; for ml-100k the member files u.data and u.item match the
shared local copy). A mismatch is reported as a checksum error, never silently accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from e2urec.artifacts import sha256_file, staged_folder
from e2urec.errors import E2URecError, one_line

DEFAULT_URL = "https://files.grouplens.org/datasets/movielens"
CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetSpec:
    """A downloadable zip: its file name, sha256, top folder inside the zip and key files."""

    name: str
    filename: str
    sha256: str
    folder: str
    required: tuple[str, ...]


SPECS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        name="ml-100k",
        filename="ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        folder="ml-100k",
        required=("u.data", "u.item", "u.user"),
    ),
    "ml-1m": DatasetSpec(
        name="ml-1m",
        filename="ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        folder="ml-1m",
        required=("users.dat", "movies.dat", "ratings.dat"),
    ),
}


def spec(name: str) -> DatasetSpec:
    """The spec of a downloadable dataset, or one error listing the valid names."""
    if name not in SPECS:
        raise E2URecError(f"no download known for {name!r}; valid: {', '.join(sorted(SPECS))}")
    return SPECS[name]


def cache_dir(cache: str | Path | None = None) -> Path:
    """`cache`, else `$E2UREC_CACHE`, else `~/.cache/e2urec`."""
    if cache is not None:
        return Path(cache).expanduser()
    return Path(os.environ.get("E2UREC_CACHE") or Path.home() / ".cache" / "e2urec").expanduser()


def dataset_url(name: str) -> str:
    """Where `name` is downloaded from: `$E2UREC_DATA_URL` (or GroupLens) + `/<file>`."""
    base = os.environ.get("E2UREC_DATA_URL") or DEFAULT_URL
    return f"{base.rstrip('/')}/{spec(name).filename}"


def find_cached(name: str, cache: str | Path | None = None) -> Path | None:
    """The cached, complete folder of dataset `name`, or None if it is not in the cache."""
    folder = cache_dir(cache) / spec(name).folder
    if all((folder / required).is_file() for required in spec(name).required):
        return folder
    return None


def offline_env() -> bool:
    """Whether `$E2UREC_OFFLINE` asks never to download (1, true or yes)."""
    return os.environ.get("E2UREC_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def manual_hint(name: str, cache: Path) -> str:
    """Where to place the files by hand when downloading is not possible."""
    item = spec(name)
    return (
        f"download {dataset_url(name)} by hand and put it at {cache / item.filename} "
        f"(sha256 {item.sha256}), or unzip it so that {cache / item.folder / item.required[0]} "
        f"exists, or pass the unzipped folder with --raw"
    )


def fetch(
    name: str, cache: str | Path | None = None, offline: bool = False, progress: bool = True
) -> Path:
    """The cached folder of `name`, downloading, verifying and unzipping it first if needed
    (never with `offline` or `$E2UREC_OFFLINE`)."""
    item = spec(name)
    cache = cache_dir(cache)
    found = find_cached(name, cache)
    if found is not None:
        return found
    placed = cache / item.filename
    if placed.is_file():
        return unpack(placed, item, cache)
    if offline or offline_env():
        raise E2URecError(
            f"{name} is not in the cache {cache} and offline mode is on (--offline or "
            "E2UREC_OFFLINE); " + manual_hint(name, cache)
        )
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{item.filename}.", suffix=".part", dir=cache)
    os.close(fd)
    try:
        download(dataset_url(name), Path(tmp), name, cache, progress)
        return unpack(Path(tmp), item, cache)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def download(url: str, target: Path, name: str, cache: Path, progress: bool) -> None:
    """Stream `url` into `target` with a progress bar; network trouble is one clear error."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "e2urec"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=name, disable=not progress
            ) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = one_line(getattr(exc, "reason", None) or exc)
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {reason}"
        raise E2URecError(
            f"cannot download {url} ({reason}); " + manual_hint(name, cache)
        ) from None


def unpack(archive: Path, item: DatasetSpec, cache: Path) -> Path:
    """Verify `archive` against the pinned sha256 and unzip its top folder into the cache.

    Only plain files directly inside the zip's top folder are extracted (no paths that could
    escape the cache). The folder appears in the cache only once complete.
    """
    actual = sha256_file(archive)
    if actual != item.sha256:
        raise E2URecError(
            f"checksum mismatch for {item.filename} ({archive}): sha256 {actual}, "
            f"expected {item.sha256}; the file is corrupted or not the official archive"
        )
    final = cache / item.folder
    try:
        with zipfile.ZipFile(archive) as zipped, staged_folder(final, overwrite=True) as staging:
            for member in zipped.infolist():
                path = PurePosixPath(member.filename)
                if member.is_dir() or len(path.parts) != 2 or path.parts[0] != item.folder:
                    continue
                with zipped.open(member) as source, open(staging / path.name, "wb") as target:
                    shutil.copyfileobj(source, target, CHUNK)
            missing = [f for f in item.required if not (staging / f).is_file()]
            if missing:
                raise E2URecError(f"{archive}: the zip lacks {item.folder}/{', '.join(missing)}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise E2URecError(f"{archive}: not a readable zip ({one_line(exc)})") from None
    return final
