"""The ``inspector stats`` and ``inspector feedback`` commands, and the store helpers every command shares.

Split from `inspector._commands` (which re-exports both commands for `inspector.cli`'s dispatch); this
module never imports `inspector._commands`, so the import goes one way.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.results import Verdict

if TYPE_CHECKING:
    from inspector.recipe import Recipe
    from inspector.store import InspectionRecord, Store

__all__ = ["REPO_ROOT", "cmd_feedback", "cmd_stats"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _open_store(url: str | None, *, allow_offline: bool = False) -> Any:
    """The statistics store of ``--store``; a file must lie where the station may write (`check_contained`).

    ``allow_offline``: a station (``run``) starts while its PostgreSQL server is away; results wait in its journal.
    """
    from inspector.paths import PathNotAllowed, check_contained
    from inspector.store import Store

    if url is not None and "://" not in url:
        try:
            check_contained(Path(url), "--store")
        except PathNotAllowed as exc:
            raise InspectorError(str(exc)) from exc
    return Store(url, allow_offline=allow_offline)


def _forward_journal(store: Any, *, timeout: float = 10.0) -> None:
    """Store what a run left in this store's result journal (killed, or the store was away) before reading it.

    Any command that opens the store is "the next start": the inspections it shows include every result
    a run printed. Says on stderr how many were stored, and how many still wait (the store refuses them now).
    """
    from inspector.recording import ResultRecorder, journal_path_of

    path = journal_path_of(store)
    if not path.is_file():
        return
    recorder = ResultRecorder(store, journal_path=path)
    waiting = recorder.pending
    if waiting:
        recorder.wait_stored(timeout)
    left = recorder.close(timeout=0.0 if recorder.pending else timeout)
    if waiting:
        print(f"note: forwarded {waiting - left} result(s) that a run had left in {path} (one already stored is "
              "not stored twice)", file=sys.stderr)
    if left:
        print(f"warning: {left} result(s) still wait in {path} for this store ({recorder.last_error}); they are "
              "not counted here", file=sys.stderr)


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        msg = f"cannot read the time {text!r}; write it like 2026-11-23T06:00"
        raise ValueError(msg) from exc


def cmd_stats(args: argparse.Namespace) -> int:
    """Yield and counts per group, defects by class; optional CSV export."""
    store = _open_store(args.store)
    try:
        _forward_journal(store)
        filters = {"recipe": args.recipe, "line": args.line, "lot": args.lot, "station": args.station,
                   "since": _parse_time(args.since), "until": _parse_time(args.until)}
        keys = (args.by,) if isinstance(args.by, str) else tuple(args.by)
        rows = store.yield_summary(group_by=keys, **filters)
        width = max([24, len(" / ".join(keys)), *(len(row.key) for row in rows)])
        header = (f"{' / '.join(keys):<{width}} {'inspected':>9} {'pass':>7} {'review':>7} {'fail':>7} {'error':>7} "
                  f"{'yield %':>8}")
        print(header)
        print("-" * len(header))
        for row in rows:
            print(f"{row.key:<{width}} {row.inspected:>9} {row.passed:>7} {row.review:>7} {row.failed:>7} "
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
        print("\ndefect types (Pareto of defective parts; reviewer's class, else the typer's guess):")
        print(f"  {'type':<22} {'parts':>7} {'share':>8} {'cum.':>8} {'regions':>8}")
        for row in pareto:
            print(f"  {row.defect_type:<22} {row.parts:>7} {100 * row.share:>6.1f} % "
                  f"{100 * row.cumulative_share:>6.1f} % {row.regions:>8}")
    chart = st.fail_rate_chart(store, flt, by=args.spc_by)
    if chart.points:
        print(f"\nFAIL-rate p-chart per {args.spc_by}: centre {100 * chart.centre:.2f} %, "
              f"{len(chart.points)} group(s), {len(chart.alarms)} alarm(s)")
        for alarm in chart.alarms:
            print(f"  ALARM {alarm.rule}: {alarm.message}")
    recipe, version = None, None
    if args.recipe_file is not None:
        from inspector.recipe import load_recipe
        from inspector.versions import resolve_version

        recipe = load_recipe(args.recipe_file)
        flt = dataclasses.replace(flt, recipe=flt.recipe or recipe.name)
        version = resolve_version(recipe)
        scores, review, mean, std = st.teaching_scores(version.path)
        drift = st.good_score_drift(store, flt, scores, review_threshold=review, model_version=version.name)
        print(f"\ngood-score drift (model {version.name}): "
              f"{drift.message if drift else 'not enough recent PASS scores of it to judge'}")
        if std > 0:
            score_chart = st.score_chart(store, flt, mean=mean, sigma=std, model_version=version.name)
            alarms = score_chart.alarms
            shown = f"; the newest {len(alarms[-5:])}" if len(alarms) > 5 else ""   # 108 listed 5 without saying so
            print(f"good-part score chart (PASS scores against the taught mean and sigma): {len(score_chart.points)} "
                  f"point(s), {len(alarms)} alarm(s){shown}")
            for alarm in alarms[-5:]:
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
            st.control_chart_svg(chart, title=f"FAIL rate per {args.spc_by} (p-chart, 3-sigma limits)", percent=True),
            encoding="utf-8")
        written = ["pareto.svg", "fail_rate.svg"]
        picture = _location_picture(args.reference, recipe)
        if picture is not None:
            crop, area = picture
            locations = st.defect_locations(store, area, flt)
            cv2.imwrite(str(args.charts / "locations.png"), st.location_heat_image(crop, locations.total()))
            written.append("locations.png")
        print(f"wrote {', '.join(written)} to {args.charts}")
        caveat = st.location_caveat(version.path) if picture is not None and version is not None else None
        if caveat:
            print(f"locations.png shows {caveat}")


def _location_picture(reference: Path | None, recipe: Recipe | None
                      ) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The good image under the location map (the ROI's crop, BGR) and the ROI in frame pixels: ``--reference``
    (a full frame), else the recipe's taught picture (its version's ``reference.png``, already the ROI), else None.

    Raises:
        ValueError: ``reference`` is not a readable image.
    """
    from inspector import statistics as st
    from inspector.versions import reference_image, resolve_version

    roi = recipe.roi.bounding_box() if recipe is not None and recipe.roi is not None else None
    if reference is not None:
        frame = cv2.imread(str(reference), cv2.IMREAD_COLOR)
        if frame is None:
            msg = f"{reference}: cannot read the reference image; give a PNG or JPEG of a good part"
            raise ValueError(msg)
        found = st.location_reference(frame, roi, is_roi=False)
        if found is None:
            msg = f"{reference}: the recipe's ROI {roi} lies outside this {frame.shape[1]}x{frame.shape[0]} image"
            raise ValueError(msg)
        return found
    taught = reference_image(resolve_version(recipe).path) if recipe is not None else None
    return None if taught is None else st.location_reference(taught, roi, is_roi=True)


def cmd_feedback(args: argparse.Namespace) -> int:
    """Record a reviewer's label; 'good' also adds the image to the recipe as a new model version."""
    from inspector.capture import load_image
    from inspector.recipe import load_recipe
    from inspector.teach import add_good_feedback

    user = args.user or getpass.getuser()
    store = _open_store(args.store)
    try:
        _forward_journal(store)
        record = store.get_inspection(args.inspection_id)
        if record.verdict is Verdict.ERROR:     # as the Review screen: no verdict to call wrong, no region to type
            msg = (f"inspection {record.id} is an ERROR ({record.error or 'not inspected'}): it was never judged, so "
                   "there is nothing to call good or to classify; nothing recorded")
            raise InspectorError(msg)
        _check_label(args.label, record.recipe, args.recipe)
        if args.region is not None:
            return _classify_region(store, record, args.region, args.label, user=user, note=args.note)
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
            # as the Review screen does: the inspection's regions take the class (the defect typer learns
            # from them at once), and the label is kept as feedback
            if record.regions:
                store.set_defect_class(args.label, user=user, inspection_id=args.inspection_id)
            store.add_feedback(args.inspection_id, args.label, user=user, note=args.note)
            regions = f"; its {len(record.regions)} region(s) classified" if record.regions else ""
            print(f"inspection {args.inspection_id}: recorded as {args.label} by {user}{regions}")
    finally:
        store.close()
    return 0


def _classify_region(store: Store, record: InspectionRecord, region_id: int, label: str, *, user: str,
                     note: str) -> int:
    """``feedback --region``: one region of the inspection takes the class (the typer types a frame's regions
    together; a part with a second kind of defect needs its own), the label kept as feedback naming it."""
    ids = [r.id for r in record.regions]
    if label == "good":
        msg = "--region takes a defect class; 'good' is said of a whole inspection (leave out --region)"
        raise InspectorError(msg)
    if region_id not in ids:
        held = ", ".join(str(i) for i in ids) if ids else "none"
        msg = f"inspection {record.id} has no region {region_id} (its regions: {held}); no class recorded"
        raise InspectorError(msg)
    store.set_defect_class(label, user=user, region_id=region_id)
    store.add_feedback(record.id, label, user=user, note=f"region {region_id}. {note}".strip())
    print(f"inspection {record.id}: region {region_id} recorded as {label} by {user}")
    return 0


def _check_label(label: str, recipe_name: str, recipe_path: Path | None) -> None:
    """A label must be 'good' or a defect class of the inspection's recipe (``--recipe``, else its file in
    recipes/); when neither is found, any label of a class name's form is taken with a warning.

    Raises:
        InspectorError: naming the label, the allowed ones and the recipe file.
    """
    from inspector.recipe import load_recipe
    from inspector.recipe_check import is_class_name

    path = recipe_path or REPO_ROOT / "recipes" / f"{recipe_name}.yaml"
    if recipe_path is None and not path.is_file():
        if label == "good":
            return
        if not is_class_name(label):     # not even the form of a class: a typo, or text a spreadsheet runs
            msg = (f"label {label!r} is neither 'good' nor a defect class name (1-32 characters of a-z, 0-9, "
                   "'_' and '-', starting with a letter or digit); give --recipe to check it against the "
                   "recipe's defect classes")
            raise InspectorError(msg)
        print(f"warning: recipe {recipe_name!r} not found (give --recipe); the label {label!r} is not checked "
              "against its defect classes", file=sys.stderr)
        return
    classes = tuple(load_recipe(path).defect_classes)
    if label == "good" or label in classes:
        return
    msg = (f"label {label!r} is neither 'good' nor a defect class of recipe {path} ({', '.join(classes)}); "
           "use one of those, or add the class to the recipe's defect_classes")
    raise InspectorError(msg)


# --------------------------------------------------------------------------- info
