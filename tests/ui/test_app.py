"""``inspector-gui`` entry point: display detection, recipe discovery, and one run with the real Station."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from inspector.store import Store
from ui.app import EXIT_NO_DISPLAY, has_display, main, recipe_choices
from ui.main_window import MainWindow, RunState


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({}, "linux", False),
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", True),
        ({}, "win32", True),
        ({}, "darwin", True),
    ],
)
def test_has_display(environ: dict[str, str], platform: str, expected: bool) -> None:
    assert has_display(environ, platform) is expected


def test_main_without_display_says_so_and_exits_distinctly(monkeypatch, capsys) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main([]) == EXIT_NO_DISPLAY
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "no display" in out and "inspector demo" in out


def test_recipe_choices_offers_the_folder(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "notes.txt"):
        (tmp_path / name).write_text("name: x\n", encoding="utf-8")
    choices = recipe_choices(tmp_path / "b.yaml")
    assert [p.name for p in choices] == ["b.yaml", "a.yml"]
    assert recipe_choices(None) == []


def test_real_station_run_fills_store_statistics_and_review(qtbot, tmp_path, taught_recipe) -> None:
    """The real Station (tiny random-weights model taught by tests/conftest.py) on a folder replay."""
    import numpy as np

    from tests.helpers.images import textured_part, with_defect, write_images

    rng = np.random.default_rng(1)
    good = [textured_part(rng) for _ in range(3)]
    bad = [with_defect(textured_part(rng), rng)[0] for _ in range(2)]
    frames = write_images(tmp_path / "frames", [good[0], bad[0], good[1], bad[1], good[2]])[0].parent
    store = Store(tmp_path / "stats.db", flush_interval=0.0)
    window = MainWindow(recipes=[taught_recipe], source=str(frames), store=store,
                        settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.counts.inspected == 5 and window.state == RunState.SOURCE_ENDED, timeout=60_000)
    assert window.counts.errors == 0, window.station.banner.detail_text
    assert "model v1" in window.station.info.text()
    store.flush()
    with qtbot.waitSignal(window.statistics.refreshed, timeout=10_000):
        window.tabs.setCurrentWidget(window.statistics)        # refreshes on show, off the GUI thread
    assert window.statistics.yield_table.item(0, 1).text() == "5"
    with qtbot.waitSignal(window.review.refreshed, timeout=10_000):
        window.tabs.setCurrentWidget(window.review)
    assert len(window.review.records) == 5
    window.close()
    store.close()


def test_sigterm_closes_the_app_as_quit_does_and_keeps_the_operators_choices(tmp_path: Path) -> None:
    """A service stop or a shutdown sends SIGTERM: the app died at once and kept none of the operator's choices
    (recipe, source, window). It now closes as Quit does: the settings are written and it exits with 0."""
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "INSPECTOR_DATA_DIR": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.Popen([sys.executable, "-m", "ui.app", "--recipe", str(repo / "recipes" / "fryum_demo.yaml"),
                             "--source", "parts-folder", "--store", str(tmp_path / "stats.db")],
                            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        while "station window open" not in lines.get(timeout=120):
            pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        proc.kill()
        proc.wait(30)
        reader.join(10)
        proc.stderr.close()
    told = []
    while not lines.empty():
        told.append(lines.get())
    assert any("SIGTERM: closing the window" in line for line in told), told
    settings = QSettings(str(tmp_path / "config" / "inspector" / "inspector-gui.conf"), QSettings.Format.IniFormat)
    assert settings.value("station/source") == "parts-folder" and settings.value("window/geometry") is not None
