"""models/files.atomic_write: the whole new file or the old one, never half; modes kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from models import files
from models.files import NEW_FILE_MODE, atomic_write


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


# ---- read_versioned_json: the one reader of model.json and the ONNX description

def _read(path: Path, *, finite: bool = True) -> dict:
    return files.read_versioned_json(path, what="test manifest", format_name="inspector.test", supported=2,
                                     limit=1 << 10, fix="write it again", missing="write one first", finite=finite)


def test_versioned_json_reads_this_and_older_versions(tmp_path: Path) -> None:
    for version in (1, 2):
        (tmp_path / "m.json").write_text(f'{{"format": "inspector.test", "format_version": {version}, "x": [1]}}')
        assert _read(tmp_path / "m.json")["x"] == [1]


@pytest.mark.parametrize(("text", "error", "message"), [
    (None, FileNotFoundError, r"m\.json not found; write one first"),
    ('{"format": "inspector.te', ValueError, r"m\.json is corrupt or truncated \(.*\); write it again"),
    ("\xff\xfe", ValueError, r"m\.json is corrupt or truncated"),
    ('{"format": "other", "format_version": 1}', ValueError,
     r'm\.json is not an inspector test manifest \(no "format"'),
    ("[1, 2]", ValueError, "is not an inspector test manifest"),
    ('{"format": "inspector.test", "format_version": 3}', ValueError,
     r"m\.json has format version 3; this program reads up to 2: update the program, or write it again"),
    ('{"format": "inspector.test", "format_version": "2"}', ValueError, "has format version '2'"),
    ('{"format": "inspector.test", "format_version": true}', ValueError, "has format version True"),
    ('{"format": "inspector.test", "format_version": 1, "t": NaN}', ValueError,
     r"m\.json holds NaN: every number of a test manifest must be finite; write it again"),
    ('{"format": "inspector.test", "format_version": 1, "t": -Infinity}', ValueError, "holds -Infinity"),
    ("{" + " " * 2000 + "}", ValueError, r"m\.json: cannot read the test manifest: .* at most 1024"),
])
def test_versioned_json_names_the_file_and_the_fix(tmp_path: Path, text: str | None, error: type[Exception],
                                                   message: str) -> None:
    path = tmp_path / "m.json"
    if text is not None:
        path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(error, match=message):
        _read(path)


def test_versioned_json_may_keep_measured_nans(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"format": "inspector.test", "format_version": 1, "diff": NaN}')
    assert _read(tmp_path / "m.json", finite=False)["diff"] != 0     # NaN: read, not refused
