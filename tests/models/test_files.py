"""models/files.atomic_write: the whole new file or the old one, never half; modes kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from models import files
from models.files import NEW_FILE_MODE, atomic_open, atomic_write


def test_writes_text_and_bytes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.txt", "grüße\r\n")
    atomic_write(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "a.txt").read_bytes() == "grüße\r\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_new_file_gets_the_shared_mode_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    atomic_write(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) == NEW_FILE_MODE
    private = tmp_path / "private.yaml"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write(private, "new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    atomic_write(private, "newer", mode=0o640)
    assert stat.S_IMODE(private.stat().st_mode) == 0o640


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, "new report")
    assert target.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_a_missing_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "x.txt", "x")
    assert not (tmp_path / "missing").exists()
    assert os.listdir(tmp_path) == []


def test_atomic_open_streams_and_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    with atomic_open(target) as handle:
        handle.write(b"a,b\n")
        assert not target.exists()                       # nothing under the final name mid-write
        handle.write(b"1,2\n")
    assert target.read_bytes() == b"a,b\n1,2\n"
    assert stat.S_IMODE(target.stat().st_mode) == NEW_FILE_MODE
    with pytest.raises(RuntimeError, match="writer died"), atomic_open(target) as handle:
        handle.write(b"half")
        msg = "writer died"
        raise RuntimeError(msg)
    assert target.read_bytes() == b"a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.csv"]
