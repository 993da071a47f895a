"""The handlers of the ``inspector`` subcommands (see `inspector.cli`).

Kept apart from the parser so that ``inspector --help`` imports none of this. Each handler takes the
parsed arguments and returns an exit code; errors are raised and printed by `inspector.cli.main`.
``stats`` and ``feedback`` live in `inspector._store_commands`, ``evaluate`` in `inspector._evaluate_commands`;
they are re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from inspector._evaluate_commands import cmd_evaluate as cmd_evaluate  # re-exported, as the two above
from inspector._store_commands import REPO_ROOT, _open_store
from inspector._store_commands import cmd_feedback as cmd_feedback  # re-exported: inspector.cli dispatches here
from inspector._store_commands import cmd_stats as cmd_stats
from inspector.cli import EXIT_INTERRUPTED, StopRequest
from inspector.errors import InspectorError
from inspector.results import InspectionResult, Progress, Verdict, VerdictCounts

T = TypeVar("T")

DEMO_DATA = Path(__file__).resolve().parent / "demo_data" / "visa_fryum"
DEMO_RECIPE = REPO_ROOT / "recipes" / "fryum_demo.yaml"


# --------------------------------------------------------------------------- helpers


def drive(job: Generator[Progress, None, T], *, desc: str) -> T:
    """Run a progress generator with a tqdm bar on stderr; returns the generator's value.

    Ctrl-C or SIGTERM stops it at its next tick and closes it (its threads end; a review keeps what it did, and
    the same command goes on from there), then raises KeyboardInterrupt; a second signal while it closes only
    says so.
    """
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
    with StopRequest(f"\ninterrupted: stopping ({desc})", f"still stopping ({desc})") as request:
        try:
            while not request.stopping.is_set():
                try:
                    tick = next(job)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                if bar.total != tick.total or bar.unit != tick.unit:
                    bar.unit = tick.unit
                    bar.reset(total=tick.total)
                bar.set_description(f"{desc}: {tick.message}" if tick.message else desc)
                bar.n = tick.done
                bar.refresh()
            raise KeyboardInterrupt           # (after the job is closed below: inspector.cli says "interrupted")
        finally:
            bar.close()
            job.close()


def _result_line(result: InspectionResult, fps: float, dropped: int) -> str:
    score = "   -   " if result.score is None else f"{result.score:7.4f}"
    where = Path(result.path).name if result.path else f"frame {result.frame_id}"
    tail = f"  {result.error}" if result.error else (f"  {len(result.regions)} region(s)" if result.regions else "")
    return (f"{result.frame_id:6d}  {result.verdict.value:<6}  score {score}  {fps:5.1f} fps  "
            f"dropped {dropped}  {result.times.total_ms:6.1f} ms  {where}{tail}")


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    """Run a station headless: a line per frame, every result stored, FAIL/REVIEW images archived.

    A line is printed only once its result is durable (`inspector.recording.ResultRecorder.record`
    returned: it is in the local journal if not yet in the store). At the end the run waits until
    the store holds every result, unless ``--leave-pending`` says to leave them in the journal.
    Exit code 1 when the source could not be opened or failed, or results were left unstored; 130 when Ctrl-C
    or SIGTERM stopped it (after the same shutdown and summary as at the source's end).
    """
    from inspector.capture import open_source, parse_source
    from inspector.pipeline import EventKind, Pipeline, PipelineEvent
    from inspector.recipe import load_recipe
    from inspector.recording import ResultRecorder
    from inspector.station import Station, check_detector_options

    if args.max_frames is not None and args.max_frames < 1:
        msg = f"--max-frames must be 1 or more, got {args.max_frames}"
        raise ValueError(msg)
    recipe = load_recipe(args.recipe)
    check_detector_options(recipe)          # what `train` refuses, `run` refuses too
    station = Station.load(recipe, device=args.device, weights=args.weights)
    for warning in station.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    spec = parse_source(args.source) if args.source else recipe.resolved_source()
    source = open_source(spec)
    store = _open_store(args.store, allow_offline=True)
    recorder = ResultRecorder(store, on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    recorder.set_lot(args.lot)
    recorder.use(station, archive=not args.no_archive)   # its defect typer, and the recipe's archive if it keeps one

    tally = VerdictCounts()
    done = threading.Event()
    source_failed: list[str] = []
    not_recorded: list[str] = []
    printing = not args.quiet
    pipeline: Pipeline | None = None
    line: Any = None

    def record(result: InspectionResult) -> InspectionResult:
        """Record durably (raises InspectorError when it cannot), count, then print: in that order."""
        nonlocal printing, tally
        if recorder.lot and not result.lot:     # stamped here too, so that MQTT publishes the lot recorded
            result = dataclasses.replace(result, lot=recorder.lot)
        recorder.record(result)     # returns once the result is durable
        tally = tally.add(result.verdict)
        if args.max_frames is not None and tally.inspected >= args.max_frames:
            done.set()
            if pipeline is not None:
                pipeline.pause()        # read no further frame
        if printing:
            stats = pipeline.stats() if pipeline is not None else None
            try:
                print(_result_line(result, stats.fps if stats else 0.0, stats.frames_dropped if stats else 0),
                      flush=True)
            except (BrokenPipeError, ValueError):       # stdout closed (| head -1): go on, silently
                printing = False
                _silence_stdout()
        return result

    def consume(result: InspectionResult) -> None:
        if done.is_set():
            return                      # past --max-frames or a journal failure: neither recorded nor shown
        try:
            recorded = record(result)
        except InspectorError as exc:
            not_recorded.append(str(exc))
            if line is not None:
                line.signals.set_fault("store", f"not recorded: {exc}")
            done.set()
            return
        if line is not None:
            line.follow_result(recorded)    # FAULT while results are ERROR (continuous mode)
            line.publish(recorded)      # MQTT publishes after the result is durable

    def on_event(event: PipelineEvent) -> None:
        if event.kind is EventKind.SOURCE_FAILED:
            source_failed.append(event.message)
        if line is not None:
            line.follow_pipeline(event)     # FAULT while the camera is lost (continuous mode)
        print(f"{event.kind.value}: {event.message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    left = 0
    runner = None
    # Ctrl-C or SIGTERM (a service stop): stop as at the source's end, and say what was done; a later one while
    # it stops only says so, except while it waits for the store, where it leaves the results in the journal
    request = StopRequest("interrupted: stopping; every result printed is recorded",
                          "still stopping: the pipeline, the PLC links and the store are closing")
    with request:
        try:
            line = _start_line_io(args.station, recipe) if args.station else None
            if line is not None and line.config.mode == "triggered":
                runner = _triggered_runner(args, line, source, station, recorder, record)
                runner.start()
                print(f"triggered mode: waiting for PLC triggers ({_link_summary(line)})", file=sys.stderr,
                      flush=True)
                while not done.wait(0.2) and not request.stopping.is_set():
                    pass
                if not request.stopping.is_set():
                    time.sleep(_LAST_ANSWER_GRACE_S)    # --max-frames: let the PLC read the last answer first
            else:
                pipeline = Pipeline(source, station, consumers=[consume], on_event=on_event)
                pipeline.start()
                while not done.is_set() and not request.stopping.is_set():
                    if pipeline.wait(timeout=0.2):
                        break
        finally:
            if runner is not None:
                runner.stop()
            if pipeline is not None:
                pipeline.stop()
            if line is not None:
                print(f"line IO: {_link_summary(line)}", file=sys.stderr)
                line.stop()
            recorder.close_archives()      # archives first: their images are on disk before the store says so
            left = _wait_for_store(recorder, leave=args.leave_pending, request=request)
            recorder.close(timeout=0.0 if left else 10.0)
            try:
                store.close()
            except InspectorError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    yield_pct = tally.yield_pct or 0.0
    summary = (f"inspected {tally.inspected} frame(s) in {elapsed:.1f} s: PASS {tally.passed}, REVIEW "
               f"{tally.review}, FAIL {tally.failed}, ERROR {tally.errors}; yield {yield_pct:.1f} %; "
               f"recorded {recorder.forwarded_count}")
    if printing:
        try:
            print(summary, flush=True)
        except (BrokenPipeError, ValueError):
            _silence_stdout()
    if left:
        print(f"error: {left} result(s) are not yet in the statistics store {store.display_name}; they wait in "
              f"{recorder.journal_path} and are forwarded the next time inspector records to this store",
              file=sys.stderr)
    for message in not_recorded:
        print(f"error: the run stopped: {message}", file=sys.stderr)
    for message in source_failed:
        print(f"error: the source failed: {message}", file=sys.stderr)
    if request.count:
        return EXIT_INTERRUPTED
    return 1 if left or not_recorded or source_failed else 0


def _wait_for_store(recorder: Any, *, leave: bool, request: StopRequest) -> int:
    """Wait until the journal is forwarded; returns what is left (only with ``leave``, or a Ctrl-C / SIGTERM
    that comes while it waits)."""
    if recorder.wait_stored(timeout=2.0) or leave:
        return int(recorder.pending)
    signals, seconds = request.count, 0
    while request.count == signals and not recorder.wait_stored(timeout=1.0):
        if seconds % 5 == 0:
            error = recorder.last_error
            print(f"waiting: {recorder.pending} result(s) wait in {recorder.journal_path} for the statistics "
                  f"store{f' ({error})' if error else ''}; Ctrl-C leaves them there for the next run",
                  file=sys.stderr, flush=True)
        seconds += 1
    return int(recorder.pending)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that nothing (not even the interpreter at exit) writes to a closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# How long ``run --max-frames`` keeps the PLC links up after the last answer in triggered mode.
_LAST_ANSWER_GRACE_S = 1.0


def _start_line_io(station_file: Path, recipe: Any) -> Any:
    """The station's PLC and MQTT links (station.yaml), started; the recipe given is the active one."""
    from inspector.lineio.line import LineIO
    from inspector.lineio.station_config import load_station_config

    config = load_station_config(station_file)
    active = 1 if not config.recipes else 0
    for slot in config.recipes:
        if recipe.path is not None and config.recipe_file(slot.number) == Path(recipe.path).resolve():
            active = slot.number
    if config.recipes and not active:
        files = ", ".join(f"{s.number}: {s.file}" for s in config.recipes)
        msg = (f"{station_file}: recipes does not list the recipe file {recipe.path} ({files}); "
               f"add it, or run one of those")
        raise InspectorError(msg)
    line = LineIO(config, active_recipe=active)
    line.start()
    return line


def _triggered_runner(args: argparse.Namespace, line: Any, source: Any, station: Any, recorder: Any,
                      record: Any) -> Any:
    """Triggered mode: answer PLC triggers; a recipe number the PLC requests loads that recipe."""
    from inspector.lineio.trigger import TriggeredRunner
    from inspector.recipe import load_recipe
    from inspector.station import Station

    def load(number: int) -> Any:
        loaded = Station.load(load_recipe(line.config.recipe_file(number)), device=args.device, weights=args.weights)
        recorder.use(loaded, archive=not args.no_archive)
        return loaded

    return TriggeredRunner(source, station, line.signals, deadline_ms=line.config.deadline_ms, record=record,
                           after_answer=[line.publish], load_recipe=load,
                           on_fault=lambda message: print(f"FAULT: {message}", file=sys.stderr, flush=True))


def _link_summary(line: Any) -> str:
    parts = []
    for state in line.monitor.snapshot():
        status = "up" if state.up else "down"
        parts.append(f"{state.name} {state.endpoint} {status}, {state.errors} error(s)"
                     + (f", {state.detail}" if state.detail else ""))
    return "; ".join(parts) or "no links configured"


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Teach a recipe from good images; print the calibration report."""
    from inspector.recipe import load_recipe
    from inspector.teach import GOOD_FROM_REVIEW_COUNT, teach

    if args.count is not None and args.good_from_review is None:
        msg = "--count works with --good-from-review only (--good teaches from every image of its folder)"
        raise InspectorError(msg)
    if args.template is None and not args.recipe.exists():
        msg = (f"{args.recipe}: recipe file not found; check the path, or make a new product's recipe from another "
               f"one: inspector train {args.recipe} --from recipes/OTHER.yaml --good DIR")
        raise InspectorError(msg)
    if args.product and args.template is None:
        msg = "--product works with --from only (a new product's recipe); edit the recipe's product: line otherwise"
        raise InspectorError(msg)
    made = _new_recipe(args.recipe, args.template, args.product) if args.template is not None else None
    try:
        recipe = load_recipe(args.recipe)
        good: Path | list[np.ndarray] = args.good
        if args.good_from_review is not None:
            good = _good_from_review(args.good_from_review,
                                     GOOD_FROM_REVIEW_COUNT if args.count is None else args.count)
        report = drive(teach(recipe, good, defects=args.defects, device=args.device, weights=args.weights,
                             self_tune=not args.fixed_config), desc="teaching")
    except BaseException:
        if made is not None:              # nothing half made: the same command can be run again
            made.unlink(missing_ok=True)
            print(f"{made}: removed again (teaching did not finish)", file=sys.stderr)
        raise
    for line in report.summary_lines():
        print(line)
    return 0


def _new_recipe(target: Path, template: Path, product: str) -> Path:
    """Write ``target`` from ``template`` as a new product's recipe (`inspector.recipe.new_recipe_from`)."""
    from inspector.recipe import edit_recipe_file

    if target.exists():
        msg = (f"{target}: exists; --from writes a new recipe file (teach this one without --from, or give "
               "another file name)")
        raise InspectorError(msg)
    edit_recipe_file(template, target, name=target.stem, roi=None, new=True, product=product)
    print(f"wrote {target}: a new recipe from {template} (its settings; product text, models, thresholds, ROI and "
          "archive folder start afresh)")
    if target.resolve().parent != template.resolve().parent:
        print(f"note: relative paths in it (source, weights) now resolve against {target.parent}", file=sys.stderr)
    return target


def _good_from_review(out: Path, count: int) -> list[np.ndarray]:
    """The frames of a zero-shot review's ``count`` lowest-scoring PASS images, each named on stdout."""
    from inspector._review_zero_shot import good_candidates
    from inspector.capture import load_image

    if count < 1:
        msg = f"--count must be at least 1, got {count}"
        raise InspectorError(msg)
    chosen = good_candidates(out, count)
    print(f"teaching from the {len(chosen)} lowest-scoring PASS image(s) of the zero-shot review {out} "
          f"(look at them in its report first: a defective one would be taught as good):")
    for path, score in chosen:
        print(f"  {score:.4f}  {path}")
    return [load_image(path) for path, _ in chosen]


# --------------------------------------------------------------------------- review


def cmd_review(args: argparse.Namespace) -> int:
    """Batch review of a folder into a browsable report."""
    from inspector.review import review

    out = args.out or args.folder.with_name(args.folder.name + "-review")
    zero_shot_config = None
    if args.references is not None:
        if not args.zero_shot:
            msg = "--references works with --zero-shot only (a recipe compares each image with its taught bank)"
            raise InspectorError(msg)
        if args.references < 1:
            msg = f"--references must be at least 1, got {args.references}"
            raise InspectorError(msg)
        from models.detectors.zero_shot import ZeroShotConfig

        zero_shot_config = ZeroShotConfig(max_references=args.references)
    if args.thresholds is not None and not args.zero_shot:
        msg = "--thresholds works with --zero-shot only (a recipe flags images at its calibrated thresholds)"
        raise InspectorError(msg)
    if args.ray is not None:
        if args.zero_shot:
            msg = "--ray needs --recipe: a zero-shot review compares the whole batch in one process"
            raise InspectorError(msg)
        if args.runtime is not None:
            msg = "--runtime works without --ray only (the Ray workers score with the recipe's runtime)"
            raise InspectorError(msg)
        if args.types_from:
            msg = "--types-from works without --ray only (the Ray workers do not read the statistics store)"
            raise InspectorError(msg)
        from inspector.ray_review import ray_review

        job = ray_review(args.folder, out, recipe=args.recipe, address=args.ray or None, workers=args.workers,
                         device=args.device, weights=args.weights)
        summary = drive(job, desc="reviewing on Ray")
    else:
        store = _open_store(args.types_from) if args.types_from else None
        try:
            summary = drive(review(args.folder, out, recipe=args.recipe, zero_shot=args.zero_shot,
                                   zero_shot_config=zero_shot_config,
                                   device=args.device, weights=args.weights, store=store,
                                   runtime=args.runtime, workers=args.workers,
                                   zero_shot_thresholds=args.thresholds), desc="reviewing")
        finally:
            if store is not None:
                store.close()
    for line in summary.summary_lines():
        print(line)
    return 0


# --------------------------------------------------------------------------- stats and feedback


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, device, and where the DINOv2 weights come from."""
    import importlib

    import timm
    import torch

    from inspector import __version__
    from models.weights import resolve_weights, weights_sources

    # after `models` (imported above): it switches onnxruntime's telemetry off before onnxruntime loads
    onnxruntime = importlib.import_module("onnxruntime")

    print(f"inspector {__version__}, Python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"OpenCV {cv2.__version__}, numpy {np.__version__}")
    if torch.cuda.is_available():
        print(f"device: CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    else:
        print("device: CPU (no CUDA device found)")
    print(f"onnxruntime providers: {', '.join(onnxruntime.get_available_providers())}")
    print("weights sources, in order:")
    for line in weights_sources("vit_small_patch14_dinov2"):
        print(f"  - {line}")
    try:
        info = resolve_weights("vit_small_patch14_dinov2", args.weights).info
    except FileNotFoundError as exc:
        print("weights: NOT FOUND")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"weights: {info.source} from {info.location} (sha256 {info.sha256[:16]}...), named {info.name}")
    print(f"  {info.description}")
    return 0


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Teach the demo recipe on its good images, inspect the test images, print verdicts and AUROC."""
    from inspector.capture import image_files, load_image
    from inspector.overlay import render_overlay
    from inspector.recipe import load_recipe
    from inspector.station import Station
    from inspector.teach import teach
    from models.evaluation import image_auroc

    if not DEMO_DATA.is_dir():
        msg = f"the demo images are missing ({DEMO_DATA}); reinstall the project"
        raise InspectorError(msg)
    recipe = load_recipe(DEMO_RECIPE)
    out: Path = args.out
    if args.retrain or not recipe.model_versions():
        print(f"teaching recipe '{recipe.name}' on {DEMO_DATA / 'train' / 'good'} ...")
        report = drive(teach(recipe, DEMO_DATA / "train" / "good", device=args.device, weights=args.weights),
                       desc="teaching")
        for line in report.summary_lines():
            print(f"  {line}")
    else:
        print(f"recipe '{recipe.name}' is taught already ({recipe.model_dir()}); --retrain teaches it again")
    station = Station.load(recipe, device=args.device, weights=args.weights)
    review, fail, pixel = station.thresholds
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    print(f"\n{'image':<34} {'truth':<8} {'verdict':<7} {'score':>7}  regions (x, y, w, h, area px)")
    scores: list[float] = []
    labels: list[int] = []
    verdicts: Counter[tuple[bool, Verdict]] = Counter()
    for path in image_files(DEMO_DATA / "test"):
        result = station.inspect_image(load_image(path), path=str(path))
        truth = path.parent.name
        assert result.score is not None and result.image_bgr is not None   # inspect_image never makes ERROR results
        scores.append(result.score)
        labels.append(0 if truth == "good" else 1)
        verdicts[(truth == "good", result.verdict)] += 1
        overlay = render_overlay(result.image_bgr, result.anomaly_map, vmin=pixel * 0.5, vmax=max(fail, pixel) * 1.5,
                                 regions=result.regions)
        cv2.imwrite(str(out / "overlays" / f"{truth}_{path.stem}.jpg"), overlay)
        regions = "; ".join(f"({r.x}, {r.y}, {r.width}, {r.height}, {r.area_px})" for r in result.regions[:3])
        print(f"{truth + '/' + path.name:<34} {'good' if truth == 'good' else 'defect':<8} "
              f"{result.verdict.value:<7} {result.score:7.4f}  {regions}")
    good_ok = sum(v for (is_good, verdict), v in verdicts.items() if is_good and verdict is Verdict.PASS)
    bad_caught = sum(v for (is_good, verdict), v in verdicts.items() if not is_good and verdict is not Verdict.PASS)
    print(f"\ndemo: image AUROC {image_auroc(scores, labels):.3f}; good passed {good_ok}/{labels.count(0)}, "
          f"defects flagged {bad_caught}/{labels.count(1)}; overlays in {out / 'overlays'}")
    return 0


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    """Export a recipe's model to ONNX beside its version (or to --out), verify it, print the numbers.

    The graph's fixed input size is that of the recipe's frames after the region of interest and the
    shorter-side resize: taken from the ROI, else the camera's requested resolution, else the first
    image of a folder source, else a 2:3 frame. Images of a folder source are the verify frames.
    """
    from inspector.errors import ExportError
    from inspector.recipe import load_recipe
    from inspector.station import Station, apply_roi
    from models.export import export_onnx
    from models.preprocess import input_size

    recipe = load_recipe(args.recipe)
    station = Station.load(recipe, device="cpu", weights=args.weights)
    detector = station.detector
    shorter = detector.config.shorter_side
    patch = detector.backbone.patch_size
    samples = [cv2.cvtColor(apply_roi(image, recipe.roi)[0], cv2.COLOR_BGR2RGB) for image in _export_samples(recipe)]
    frame_hw = _export_frame_size(recipe, samples)
    input_hw = input_size(*frame_hw, shorter_side=shorter, patch_size=patch)
    verify = [s for s in samples if input_size(*s.shape[:2], shorter_side=shorter, patch_size=patch) == input_hw]
    if station.version is None:
        msg = f"recipe '{recipe.name}' has no model version to export; teach it first (inspector train)"
        raise ExportError(msg)
    out = args.out or station.version.path / "model.onnx"
    print(f"exporting recipe '{recipe.name}' model {station.model_version} ({detector.bank_size} bank patches) "
          f"for {frame_hw[0]}x{frame_hw[1]} frames (model input {input_hw[0]}x{input_hw[1]}) to {out} ...")
    try:
        report = export_onnx(detector, out, input_hw=input_hw, verify_images=verify or None, weights=station.weights)
    except RuntimeError as exc:
        raise ExportError(str(exc)) from exc
    except ValueError as exc:
        msg = f"recipe '{recipe.name}': cannot export model {station.model_version}: {exc}"
        raise ExportError(msg) from exc
    for line in report.summary_lines():
        print(line)
    if not verify:
        print("note: verified on seeded noise frames (the recipe's source gave no sample images of this size)")
    return 0


def _export_samples(recipe: Any, limit: int = 2) -> list[np.ndarray]:
    """Up to ``limit`` BGR frames of the recipe's folder source (none for cameras and videos)."""
    from inspector.capture import FolderSpec, image_files, load_image

    src = recipe.resolved_source()
    if not isinstance(src, FolderSpec):
        return []
    files = [src.path] if src.path.is_file() else image_files(src.path) if src.path.is_dir() else []
    frames = []
    for path in files[:limit]:
        try:
            frames.append(load_image(path))
        except InspectorError:
            continue
    return frames


def _export_frame_size(recipe: Any, samples_rgb: list[np.ndarray]) -> tuple[int, int]:
    """(H, W) of the frames the detector will see (after the ROI)."""
    from inspector.capture import CameraSpec

    if recipe.roi is not None:
        _, _, w, h = recipe.roi.bounding_box()
        return h, w
    src = recipe.source
    if isinstance(src, CameraSpec) and src.width and src.height:
        return int(src.height), int(src.width)
    if samples_rgb:
        return samples_rgb[0].shape[0], samples_rgb[0].shape[1]
    side = recipe.preprocess.shorter_side
    return side, side * 3 // 2
