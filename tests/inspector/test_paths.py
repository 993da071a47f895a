"""Per-user folders and safe file names (`inspector.paths`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inspector import paths
from inspector.paths import safe_name

SAFE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def test_data_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    assert paths.data_dir() == tmp_path / "data"
    assert not (tmp_path / "data").exists(), "data_dir() must not create the folder unless asked"
    assert paths.data_dir(create=True).is_dir()
    assert paths.database_path() == tmp_path / "data" / "inspector.db"
    assert paths.model_dir("fryum_demo") == tmp_path / "data" / "models" / "fryum_demo"
    assert paths.archive_dir("fryum_demo") == tmp_path / "data" / "archive" / "fryum_demo"


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", str(tmp_path / "cache"))
    assert paths.cache_dir(create=True) == tmp_path / "cache"
    assert (tmp_path / "cache").is_dir()


def test_platform_defaults_when_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INSPECTOR_DATA_DIR", raising=False)
    monkeypatch.setenv("INSPECTOR_CACHE_DIR", "  ")      # blank counts as unset
    assert paths.data_dir().name == "inspector"
    assert paths.cache_dir().name in {"inspector", "Cache"}   # Windows appends "Cache"


def test_model_dir_cannot_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path))
    target = paths.model_dir("../../etc")
    assert target.parent == tmp_path / "models"
    assert ".." not in target.parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fryum_demo", "fryum_demo"),
        ("bracket-A.v2", "bracket-A.v2"),
        ("lot 7/B", "lot_7_B-22a1512f"),
        ("../../etc/passwd", "etc_passwd-3754d6cb"),
        ("", "unnamed-e3b0c442"),
        ("..", "unnamed-5ec1f7e7"),
        ("CON", "_CON-a3dbc4b6"),
        ("-rf", "rf-686c39ac"),
    ],
)
def test_safe_name_table(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_safe_name_keeps_distinct_names_apart() -> None:
    assert safe_name("lot/7") != safe_name("lot_7")
    assert safe_name("lot_7") == "lot_7"


def test_safe_name_rejects_tiny_max_length() -> None:
    with pytest.raises(ValueError, match="max_length must be at least 16"):
        safe_name("x", max_length=3)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), max_length=st.integers(min_value=16, max_value=200))
def test_safe_name_properties(text: str, max_length: int) -> None:
    name = safe_name(text, max_length=max_length)
    assert name, "never empty"
    assert set(name) <= SAFE_CHARS, name
    assert len(name) <= max_length
    assert not name.startswith((".", "-")), name
    assert name not in {".", ".."}
    assert name.split(".")[0].lower() not in {"con", "prn", "aux", "nul"}
    assert Path("/base", name).parent == Path("/base"), "one path component, inside the folder"
    assert safe_name(text, max_length=max_length) == name, "deterministic"
