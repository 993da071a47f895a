"""The handlers of the ``inspector`` subcommands (see `inspector.cli`).

Kept apart from the parser so that ``inspector --help`` imports none of this. Each handler takes the
parsed arguments and returns an exit code; errors are raised and printed by `inspector.cli.main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.results import InspectionResult, Progress, Verdict

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = Path(__file__).resolve().parent / "demo_data" / "visa_fryum"
DEMO_RECIPE = REPO_ROOT / "recipes" / "fryum_demo.yaml"


# --------------------------------------------------------------------------- helpers


def drive(job: Generator[Progress, None, T], *, desc: str) -> T:
    """Run a progress generator with a tqdm bar on stderr; returns the generator's value."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        while True:
            try:
                tick = next(job)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if bar.total != tick.total:
                bar.reset(total=tick.total)
            bar.set_description(f"{desc}: {tick.message}" if tick.message else desc)
            bar.n = tick.done
            bar.refresh()
    finally:
        bar.close()
        job.close()


def _open_store(url: str | None) -> Any:
    from inspector.store import Store

    return Store(url)


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        msg = f"cannot read the time {text!r}; write it like 2026-11-23T06:00"
        raise ValueError(msg) from exc


def _result_line(result: InspectionResult, fps: float, dropped: int) -> str:
    score = "   -   " if result.score is None else f"{result.score:7.4f}"
    where = Path(result.path).name if result.path else f"frame {result.frame_id}"
    tail = f"  {result.error}" if result.error else (f"  {len(result.regions)} region(s)" if result.regions else "")
    return (f"{result.frame_id:6d}  {result.verdict.value:<6}  score {score}  {fps:5.1f} fps  "
            f"dropped {dropped}  {result.times.total_ms:6.1f} ms  {where}{tail}")


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    """Run a station headless: a line per frame, every result stored, FAIL/REVIEW images archived."""
    from inspector.capture import open_source, parse_source
    from inspector.pipeline import Pipeline, PipelineEvent
    from inspector.recipe import load_recipe
    from inspector.recording import ResultRecorder
    from inspector.station import Station

    recipe = load_recipe(args.recipe)
    station = Station.load(recipe, device=args.device, weights=args.weights)
    for warning in station.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    spec = parse_source(args.source) if args.source else recipe.resolved_source()
    source = open_source(spec)
    store = _open_store(args.store)
    recorder = ResultRecorder(store, on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    recorder.set_lot(args.lot)
    if not args.no_archive:
        recorder.use(station)   # the recipe's archive, if it keeps one

    counts: Counter[str] = Counter()
    done = threading.Event()
    pipeline: Pipeline | None = None

    def record(result: InspectionResult) -> None:
        recorder.record(result)
        counts[result.verdict.value] += 1
        if not args.quiet and pipeline is not None:
            stats = pipeline.stats()
            print(_result_line(result, stats.fps, stats.frames_dropped), flush=True)
        if args.max_frames is not None and sum(counts.values()) >= args.max_frames:
            done.set()

    def on_event(event: PipelineEvent) -> None:
        print(f"{event.kind.value}: {event.message}", file=sys.stderr, flush=True)

    pipeline = Pipeline(source, station, consumers=[record], on_event=on_event)
    started = time.perf_counter()
    try:
        pipeline.start()
        while not done.is_set():
            if pipeline.wait(timeout=0.2):
                break
    finally:
        pipeline.stop()
        recorder.close()        # archives first: their images are on disk before the store says so
        store.close()
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    passed = counts[Verdict.PASS.value]
    judged = total - counts[Verdict.ERROR.value]
    yield_pct = 100.0 * passed / judged if judged else 0.0
    print(f"inspected {total} frame(s) in {elapsed:.1f} s: PASS {passed}, REVIEW {counts['REVIEW']}, "
          f"FAIL {counts['FAIL']}, ERROR {counts['ERROR']}; yield {yield_pct:.1f} %; "
          f"recorded {store.recorded_count}")
    return 0


# --------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    """Teach a recipe from good images; print the calibration report."""
    from inspector.recipe import load_recipe
    from inspector.teach import teach

    recipe = load_recipe(args.recipe)
    report = drive(teach(recipe, args.good, defects=args.defects, device=args.device, weights=args.weights),
                   desc="teaching")
    for line in report.summary_lines():
        print(line)
    return 0


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy on an MVTec-AD-layout category: image AUROC, pixel AUROC, AUPRO, F1, ms per image."""
    from inspector.recipe import DetectorSettings
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig, create_detector
    from models.evaluation import Detector, evaluate, load_category
    from models.weights import resolve_weights

    if args.types is not None:
        return _evaluate_types(args)
    category = load_category(args.category)
    defaults = DetectorSettings()          # what a fresh recipe uses: the measured defaults
    resolved = resolve_weights(defaults.backbone, args.weights)
    config = PatchKNNConfig.from_dict(dict(defaults.options))
    backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict, blocks=tuple(defaults.blocks),
                               device=args.device or "auto")
    if args.zero_shot:
        from models.detectors.zero_shot import evaluate_zero_shot

        report = evaluate_zero_shot(backbone, category, progress=_tqdm_progress("zero-shot"))
    else:
        # create_detector is typed nn.Module (the registry's type); patch_knn is a Detector
        report = evaluate(lambda: cast(Detector, create_detector("patch_knn", backbone=backbone, config=config)),
                          category, shots=args.shots or None, seed=args.seed, progress=_tqdm_progress("evaluating"))
    data = report.to_dict()
    data["weights"] = dataclasses.asdict(resolved.info)
    print(f"{category.name}: image AUROC {data['image_auroc']:.4f}  pixel AUROC {data['pixel_auroc']:.4f}  "
          f"AUPRO {data['aupro']:.4f}  F1 {data['f1']:.4f}  {data['ms_per_image']:.1f} ms/image  "
          f"({data.get('n_train', 0)} train, {data['n_test']} test)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _evaluate_types(args: argparse.Namespace) -> int:
    """``inspector evaluate --types N``: few-shot defect typing accuracy (models.type_evaluation)."""
    from inspector.recipe import DetectorSettings
    from models.backbone import create_backbone
    from models.detectors import PatchKNNConfig, create_detector
    from models.type_evaluation import evaluate_defect_types
    from models.weights import resolve_weights

    defaults = DetectorSettings()
    resolved = resolve_weights(defaults.backbone, args.weights)
    config = PatchKNNConfig.from_dict(dict(defaults.options))

    def make_detector() -> Any:
        backbone = create_backbone(defaults.backbone, state_dict=resolved.state_dict,
                                   blocks=tuple(defaults.blocks), device=args.device or "auto")
        return create_detector("patch_knn", backbone=backbone, config=config)

    key = json.dumps([resolved.info.sha256, defaults.backbone, list(defaults.blocks), config.to_dict()],
                     sort_keys=True)
    start = time.perf_counter()
    report = evaluate_defect_types(make_detector, args.category, n_labelled=args.types,
                                   shots=args.shots or None, seed=args.seed, repeats=args.type_repeats,
                                   cache_dir=args.cache, cache_key=key, max_per_type=args.type_max_images,
                                   progress=_tqdm_progress("typing"))
    data: dict[str, Any] = {"defect_type_accuracy": report.accuracy, **report.to_dict(),
                            "weights": dataclasses.asdict(resolved.info), "wall_s": time.perf_counter() - start,
                            "command": "inspector evaluate " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])}
    print(f"{report.category}: defect type accuracy {report.accuracy:.3f} (balanced {report.balanced_accuracy:.3f}), "
          f"unknown {report.unknown_share:.3f}, {report.n_types} types, {report.n_labelled} labelled per type, "
          f"{report.n_typed_per_draw} typed per draw x {len(report.seeds)} draws; a type left unlabelled is "
          f"typed unknown {100 * report.novel_unknown_share:.0f} % of the time")
    for name, acc in sorted(report.per_type.items()):
        print(f"  {name:<28} {acc:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _tqdm_progress(desc: str) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def progress(done: int, total: int, *rest: Any) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


# --------------------------------------------------------------------------- review


def cmd_review(args: argparse.Namespace) -> int:
    """Batch review of a folder into a browsable report."""
    from inspector.review import review

    out = args.out or args.folder.with_name(args.folder.name + "-review")
    store = _open_store(args.types_from) if args.types_from else None
    try:
        summary = drive(review(args.folder, out, recipe=args.recipe, zero_shot=args.zero_shot,
                               device=args.device, weights=args.weights, store=store), desc="reviewing")
    finally:
        if store is not None:
            store.close()
    for line in summary.summary_lines():
        print(line)
    return 0


# --------------------------------------------------------------------------- stats and feedback


def cmd_stats(args: argparse.Namespace) -> int:
    """Yield and counts per group, defects by class; optional CSV export."""
    store = _open_store(args.store)
    try:
        filters = {"recipe": args.recipe, "line": args.line, "lot": args.lot,
                   "since": _parse_time(args.since), "until": _parse_time(args.until)}
        rows = store.yield_summary(group_by=args.by, **filters)
        header = f"{args.by:<24} {'inspected':>9} {'pass':>7} {'review':>7} {'fail':>7} {'error':>7} {'yield %':>8}"
        print(header)
        print("-" * len(header))
        for row in rows:
            print(f"{str(row.key):<24} {row.inspected:>9} {row.passed:>7} {row.review:>7} {row.failed:>7} "
                  f"{row.errors:>7} {row.yield_pct:>8.1f}")
        if not rows:
            print("(no inspections recorded yet)")
        defects = store.defects_by_class(**filters)
        if defects:
            print("\ndefects by class:")
            for name, count in defects:
                print(f"  {name:<22} {count:>7}")
        if args.csv:
            n = store.export_csv(args.csv, **filters)
            print(f"\nwrote {n} inspection(s) to {args.csv}")
        _print_actionable_stats(store, args, filters)
    finally:
        store.close()
    return 0


def _print_actionable_stats(store: Any, args: argparse.Namespace, filters: dict[str, Any]) -> None:
    """``inspector stats``: Pareto of defect types, FAIL-rate p-chart, drift, exports and charts."""
    from inspector import statistics as st

    flt = st.Filters(**filters)
    pareto = st.defect_pareto(store, flt)
    if pareto:
        print("\ndefect types (Pareto; reviewer's class, else the typer's guess):")
        for row in pareto:
            print(f"  {row.defect_type:<22} {row.count:>7} {100 * row.share:>6.1f} % "
                  f"{100 * row.cumulative_share:>6.1f} % cum.")
    chart = st.fail_rate_chart(store, flt, by=args.spc_by)
    if chart.points:
        print(f"\nFAIL-rate p-chart per {args.spc_by}: centre {100 * chart.centre:.2f} %, "
              f"{len(chart.points)} group(s), {len(chart.alarms)} alarm(s)")
        for alarm in chart.alarms:
            print(f"  ALARM {alarm.rule}: {alarm.message}")
    recipe = None
    if args.recipe_file is not None:
        from inspector.recipe import load_recipe
        from inspector.station import resolve_version

        recipe = load_recipe(args.recipe_file)
        flt = dataclasses.replace(flt, recipe=flt.recipe or recipe.name)
        scores, review, mean, std = st.teaching_scores(resolve_version(recipe).path)
        drift = st.good_score_drift(store, flt, scores, review_threshold=review)
        print(f"\ngood-score drift: {drift.message if drift else 'not enough recent PASS scores to judge'}")
        if std > 0:
            score_chart = st.score_chart(store, flt, mean=mean, sigma=std)
            print(f"score chart: {len(score_chart.points)} point(s), {len(score_chart.alarms)} alarm(s)")
            for alarm in score_chart.alarms[-5:]:
                print(f"  ALARM {alarm.rule}: {alarm.message}")
    if args.regions_csv:
        n = st.export_regions_csv(store, args.regions_csv, flt)
        print(f"wrote {n} region(s) to {args.regions_csv}")
    if args.parquet:
        counts = st.export_parquet(store, args.parquet, flt)
        print(f"wrote {counts['inspections']} inspection(s) and {counts['regions']} region(s) to {args.parquet}")
    if args.charts:
        args.charts.mkdir(parents=True, exist_ok=True)
        (args.charts / "pareto.svg").write_text(st.pareto_svg(pareto), encoding="utf-8")
        (args.charts / "fail_rate.svg").write_text(
            st.control_chart_svg(chart, title=f"FAIL rate per {args.spc_by} (p-chart, 3-sigma limits)"),
            encoding="utf-8")
        written = ["pareto.svg", "fail_rate.svg"]
        if args.reference is not None:
            reference = cv2.imread(str(args.reference), cv2.IMREAD_COLOR)
            if reference is None:
                msg = f"{args.reference}: cannot read the reference image; give a PNG or JPEG of a good part"
                raise ValueError(msg)
            area = (0, 0, reference.shape[1], reference.shape[0])
            if recipe is not None and recipe.roi is not None:
                area = recipe.roi.bounding_box()
            x, y, w, h = area
            locations = st.defect_locations(store, area, flt)
            image = st.location_heat_image(np.ascontiguousarray(reference[y : y + h, x : x + w]), locations.total())
            cv2.imwrite(str(args.charts / "locations.png"), image)
            written.append("locations.png")
        print(f"wrote {', '.join(written)} to {args.charts}")


def cmd_feedback(args: argparse.Namespace) -> int:
    """Record a reviewer's label; 'good' also adds the image to the recipe as a new model version."""
    from inspector.capture import load_image
    from inspector.recipe import load_recipe
    from inspector.teach import add_good_feedback

    user = args.user or getpass.getuser()
    store = _open_store(args.store)
    try:
        record = store.get_inspection(args.inspection_id)
        if args.label == "good":
            recipe_path = args.recipe or REPO_ROOT / "recipes" / f"{record.recipe}.yaml"
            image_path = record.image_path or record.path
            if not image_path or not Path(image_path).is_file():
                msg = (f"inspection {args.inspection_id} has no stored image to learn from "
                       f"(archived image or source file); it is recorded as good but the model is unchanged")
                store.add_feedback(args.inspection_id, "good", user=user, note=args.note)
                raise InspectorError(msg)
            version = add_good_feedback(load_recipe(recipe_path), [load_image(image_path)],
                                        device=args.device, note=args.note)
            store.add_feedback(args.inspection_id, "good", user=user, note=f"model {version}. {args.note}".strip())
            print(f"inspection {args.inspection_id}: recorded as good by {user}; recipe {record.recipe} "
                  f"now uses model {version}")
        else:
            store.add_feedback(args.inspection_id, args.label, user=user, note=args.note)
            print(f"inspection {args.inspection_id}: recorded as {args.label} by {user}")
    finally:
        store.close()
    return 0


# --------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, device, and where the DINOv2 weights come from."""
    import onnxruntime
    import timm
    import torch

    from inspector import __version__
    from models.weights import resolve_weights, weights_sources

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
    print(f"weights: {info.source} from {info.location} (sha256 {info.sha256[:16]}...)")
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
