"""``inspector-gui``: the desktop app of the inspection station.

Usage::

    inspector-gui [--recipe PATH] [--source TEXT] [--kiosk] [--store PATH_OR_URL] [--start] [--station YAML]

Without ``--recipe`` the demo recipe ``recipes/fryum_demo.yaml`` is offered, with every other recipe
of its folder. Without a display (Linux with neither ``DISPLAY`` nor ``WAYLAND_DISPLAY``, and no
``QT_QPA_PLATFORM`` chosen) it prints one line and exits with `EXIT_NO_DISPLAY`, so a launcher can
fall back to the headless demo (``inspector demo``).

SIGTERM (a service stop, the PC shutting down) and SIGINT (Ctrl+C in its terminal) close the window as Quit
does: the operator's choices are saved and every thread ends; exit code 0.

Exit codes: 0 closed normally, 1 failed to start, 2 usage error, 3 no display.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from PySide6.QtCore import QSettings

    from inspector.lineio.line import LineIO
    from inspector.store import Store
    from ui.engine import LoadInspector, StationInspector
    from ui.main_window import MainWindow

__all__ = [
    "EXIT_ERROR", "EXIT_NO_DISPLAY", "EXIT_OK", "build_parser", "default_recipe", "has_display", "main",
    "recipe_choices", "station_recipes", "station_window",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_NO_DISPLAY: Final = 3      # distinct from argparse's 2, so the launcher can tell "no screen" apart
WARM_UP_AFTER_MS: Final = 500   # the engine's imports begin this long after the window is shown (it paints first)

DEMO_RECIPE: Final = Path("recipes") / "fryum_demo.yaml"

log = logging.getLogger("ui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector-gui",
                                     description="Visual inspection station (desktop app).")
    parser.add_argument("--recipe", type=Path, default=None, metavar="PATH",
                        help="recipe file to start with (default: recipes/fryum_demo.yaml); the other "
                             "recipes of its folder are offered too")
    parser.add_argument("--source", default=None, metavar="TEXT",
                        help='frame source: camera index ("0"), stream URL, video file or image folder '
                             "(default: the last one used, else the recipe's)")
    parser.add_argument("--kiosk", action="store_true",
                        help="start full screen, station screen only (F11 leaves)")
    parser.add_argument("--store", default=None, metavar="PATH_OR_URL",
                        help="statistics store: SQLite file or SQLAlchemy URL "
                             "(default: the per-user data dir)")
    parser.add_argument("--start", action="store_true",
                        help="start inspecting at once (as if F5 was pressed)")
    parser.add_argument("--station", type=Path, default=None, metavar="YAML",
                        help="station.yaml: PLC trigger and result over Modbus TCP / OPC UA (triggered mode), "
                             "results over MQTT, the links' state in the footer (docs/plc.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def has_display(environ: dict[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether Qt can open a window: always on Windows/macOS; elsewhere needs X11, Wayland or a chosen QPA."""
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin")):
        return True
    return any(env.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def default_recipe() -> Path | None:
    """The demo recipe, looked up next to the package (source checkout) and in the working folder."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = root / DEMO_RECIPE
        if candidate.is_file():
            return candidate
    return None


def recipe_choices(recipe: Path | None) -> list[Path]:
    """The recipe given first, then the other ``*.yaml`` / ``*.yml`` files of its folder (sorted)."""
    if recipe is None:
        return []
    recipe = recipe.expanduser().resolve()
    siblings = sorted(p.resolve() for p in recipe.parent.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    return [recipe, *(p for p in siblings if p != recipe)]


def _open_store(text: str | None) -> Store:
    from inspector.paths import check_contained
    from inspector.store import Store

    if text and "://" not in text:
        check_contained(Path(text), "--store")   # a store file only where the station may write
    # None: the configured plant store, else the per-user SQLite file. A station starts while its server is
    # away: results wait in the journal and the footer says "Store offline".
    return Store(text or None, allow_offline=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if not has_display():
        print("inspector-gui: no display (DISPLAY/WAYLAND_DISPLAY unset); "
              "run 'inspector demo' for the headless demo")
        return EXIT_NO_DISPLAY
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    from ui.collector import GuiThreadCollector
    from ui.engine import warm_up
    from ui.theme import apply_theme
    from ui.workers import JobRunner, call_as_job

    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(
        [sys.argv[0] if sys.argv else "inspector-gui"])
    app.setApplicationName("inspector-gui")
    app.setOrganizationName("inspector")
    apply_theme(app)
    recipe = args.recipe if args.recipe is not None else default_recipe()
    if recipe is not None and not recipe.is_file():
        print(f"inspector-gui: recipe {recipe} not found; pass --recipe PATH to an existing recipe file")
        return EXIT_ERROR
    store: Store | None = None
    try:
        store = _open_store(args.store)
    except Exception as exc:  # the station still runs without statistics; the operator is told
        log.exception("statistics store unavailable")
        QMessageBox.warning(None, "Statistics store",
                            f"Results will not be recorded: {type(exc).__name__}: {exc}")
    line: LineIO | None = None
    if args.station is not None:
        try:
            line = _start_line_io(args.station)
        except Exception as exc:   # a bad station.yaml or a port in use: say so; the station runs unlinked
            log.exception("line IO unavailable")
            QMessageBox.warning(None, "Line IO", f"PLC and MQTT links are off: {exc}")
    window = station_window(recipe_choices(recipe), line, source=args.source, store=store, kiosk=args.kiosk)
    window.show()
    close_on_signals(window)
    log.info("station window open; SIGTERM or Ctrl+C closes it as Quit does")
    # Everything made so far (Qt's wrappers, the store, the window) lives as long as the app: moved out of the
    # collector's view, a full collection no longer walks it and holds the interpreter lock ~0.25 s on
    # whichever thread it lands, the GUI thread included.
    gc.collect()
    gc.freeze()
    # and from now on cycles are collected on this thread only, never on a worker (ui.collector); torch is
    # frozen too once the warm-up below or the first recipe's load has imported it
    collector = GuiThreadCollector(parent=window)
    window.engine_loaded.connect(collector.settle)
    warm = JobRunner(window)
    warm.stopped.connect(collector.settle)
    if args.start:
        window.start()
    else:      # the engine imported while the window waits for its operator (ui.engine.warm_up), once it has painted
        QTimer.singleShot(WARM_UP_AFTER_MS, lambda: warm.start(call_as_job(warm_up, "importing the engine"),
                                                                name="warm-up"))
    try:
        return int(app.exec())
    finally:
        warm.shutdown()
        window.shutdown()
        if line is not None:
            line.stop()
        if store is not None:
            store.close()


def close_on_signals(window: MainWindow) -> None:
    """SIGTERM and SIGINT close ``window`` as Quit does, from its event loop (the handler itself only asks:
    Python runs it between two of the GUI thread's Python calls, which the window's 250 ms timer ensures)."""
    from PySide6.QtCore import QTimer

    def close(signum: int, _frame: object) -> None:
        log.info("%s: closing the window", signal.Signals(signum).name)
        QTimer.singleShot(0, window, window.close)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, close)


def _start_line_io(station_file: Path) -> LineIO:
    """The links of a station.yaml, started."""
    from inspector.lineio.line import LineIO
    from inspector.lineio.station_config import load_station_config

    config = load_station_config(station_file)
    line = LineIO(config, active_recipe=config.initial_recipe or 0)
    line.start()
    return line


def station_window(recipes: Sequence[Path], line: LineIO | None, *, source: str | None = None,
                   store: Store | None = None, kiosk: bool = False, settings: QSettings | None = None,
                   load_inspector: LoadInspector | None = None) -> MainWindow:
    """The main window, with ``line``'s links in its footer when a station.yaml was given.

    Continuous mode: every result is published after it is recorded, and FAULT (HR1 bit3) follows the
    station (`inspector.lineio.triggered_pipeline.continuous_pipelines`). Triggered mode: each run of the
    window answers the PLC's triggers (`inspector.lineio.triggered_pipeline`), one frame per trigger,
    recorded, answered, then published; a recipe number the PLC writes into HR7 loads that recipe, and
    the window follows it (recipe box, info line, thresholds; "product changeover by the PLC: ...").
    station.yaml's recipes are offered in the recipe box too.
    """
    from ui.engine import default_load_inspector
    from ui.main_window import MainWindow

    load = load_inspector or default_load_inspector
    if line is None:
        window = MainWindow(recipes=recipes, source=source, store=store, kiosk=kiosk, settings=settings,
                            load_inspector=load)
    elif line.config.mode == "continuous":
        from inspector.lineio.triggered_pipeline import continuous_pipelines

        window = MainWindow(recipes=recipes, source=source, store=store, kiosk=kiosk, settings=settings,
                            load_inspector=load, make_pipeline=continuous_pipelines(line))
    else:
        from inspector.lineio.triggered_pipeline import TriggeredPipeline, triggered_pipelines
        from inspector.pipeline import FrameInspector

        offered = station_recipes(recipes, line)

        def load_number(number: int) -> StationInspector:      # changeover by HR7, on the runner's thread
            inspector = load(offered[number])
            window.recorder.use(inspector)                      # its archive, as a switch in the app does
            return inspector

        def changed_over(pipeline: TriggeredPipeline, number: int, inspector: FrameInspector | None,
                         problem: str) -> None:
            # On the runner's thread: the controller only takes note and emits (queued to the GUI thread).
            recipe = offered[number]
            message = (f"product changeover by the PLC: {recipe.stem}" if inspector is not None else
                       f"the PLC's product changeover failed: {problem}; every trigger is answered ERROR")
            window.controller.follow_pipeline(pipeline, recipe, inspector, message)

        window = MainWindow(recipes=[*recipes, *(p for p in offered.values() if p not in recipes)], source=source,
                            store=store, kiosk=kiosk, settings=settings, load_inspector=load,
                            make_pipeline=triggered_pipelines(line, load_recipe=load_number,
                                                              on_changeover=changed_over))
    if line is not None:
        from ui.link_status import attach_line_io

        attach_line_io(window, line, publish=line.config.mode != "triggered")
    return window


def station_recipes(recipes: Sequence[Path], line: LineIO) -> dict[int, Path]:
    """Each PLC recipe number of ``line``'s station.yaml -> its file, as the recipe box offers it (the
    offered path when it is the same file, so that a changeover selects that row)."""
    out: dict[int, Path] = {}
    for slot in line.config.recipes:
        file = line.config.recipe_file(slot.number)
        same = [p for p in recipes if p.resolve() == file.resolve()]
        out[slot.number] = same[0] if same else file
    return out


if __name__ == "__main__":
    sys.exit(main())
