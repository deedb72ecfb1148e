"""Atomic writes: whole files with ordinary permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat

import pytest

from e2urec.artifacts import atomic_write_bytes


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "plot.png", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "plot.png").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "plot.png").stat().st_mode) == 0o644


def test_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
