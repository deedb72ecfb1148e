"""Run and data folders: atomic writes, hashes, manifests, and folders that appear only when complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from e2urec.errors import E2URecError, first_line

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


WEIGHTS = "*.safetensors"


def weights_sha256(folder: str | Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every safetensors file under `folder`, keyed by its path relative to `folder`
    (posix, sorted); files inside sub-folders named in `skip` are left out."""
    folder = Path(folder)
    hashes = {}
    for path in sorted(folder.rglob(WEIGHTS)):
        relative = path.relative_to(folder)
        if not skip or relative.parts[0] not in skip:
            hashes[relative.as_posix()] = sha256_file(path)
    return hashes


def model_sha256(model_dir: str | Path, hashes: dict[str, str] | None = None) -> str:
    """sha256 of a model folder's safetensors weights (one file: that file's hash; several: the
    hash of their "name sha256" lines). `hashes`: `weights_sha256(model_dir)` when the caller
    has it already, so the weights are not read twice."""
    hashes = weights_sha256(model_dir) if hashes is None else hashes
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return sha256_bytes("".join(f"{name} {sha}\n" for name, sha in hashes.items()).encode())


def check_safetensors(path: str | Path) -> None:
    """Refuse a weight file whose safetensors header cannot be read (truncated, corrupted, not
    safetensors at all) with one error naming the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error type (and OSError)
        raise E2URecError(
            f"weight file {path} cannot be read (truncated or corrupted?): {first_line(exc)}"
        ) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`. The temp file
    is created with mode 0666 so that the umask gives it the permissions a plain `open` would
    (mkstemp's private 0600 would stick to the result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Pretty, key-sorted JSON written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parsed JSON, or one clear error if the file is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise E2URecError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise E2URecError(
            f"{what} is not valid JSON: {path} ({exc.msg}, line {exc.lineno})"
        ) from None


def environment_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour shapes results."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("e2urec", "torch", "transformers", "peft", "accelerate", "numpy", "pandas"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def check_output(final: str | Path, overwrite: bool) -> None:
    """An existing output folder is one clear error unless `overwrite` (see `staged_folder`)."""
    if Path(final).exists() and not overwrite:
        raise E2URecError(f"output folder already exists: {final} (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_folder(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename.

    If the block raises, the temporary folder (and any parent folder made for `final`) is
    removed and `final` is left untouched, so an interrupted job never leaves a folder that
    looks complete. An existing `final` is replaced only when `overwrite` is true.
    """
    final = Path(final)
    check_output(final, overwrite)
    created = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
        if final.exists():
            trash = Path(
                tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent)
            )
            os.replace(final, trash / final.name)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # deepest first: the folders made for `final` go again
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
