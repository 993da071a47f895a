"""Static checks: ruff is clean on the whole tree, mypy on the engine and the ML packages (STYLE.md section 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mypy_inspector_and_models() -> None:
    """``python -m mypy inspector models`` with the pyproject.toml config exits 0.

    Takes about 28 s on the 2-core dev machine with an empty .mypy_cache, about 2 s with a warm one.
    """
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    run = subprocess.run([sys.executable, "-m", "mypy", "inspector", "models"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"mypy found problems:\n{run.stdout}{run.stderr}"


def test_ruff_clean() -> None:
    """``python -m ruff check .`` with the pyproject.toml rules exits 0 (about 1 s)."""
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]')")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"ruff found problems:\n{run.stdout}{run.stderr}"
