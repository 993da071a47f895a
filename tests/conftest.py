"""Shared fixtures: isolate user state, keep Qt offscreen, make small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Qt tests run offscreen unless a display is asked for explicitly.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the developer's data directory (the weights cache is shared per session)."""
    data = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(data))
    monkeypatch.delenv("INSPECTOR_WEIGHTS", raising=False)
