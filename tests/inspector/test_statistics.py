"""Statistics from the store: Pareto of types, location map, p-chart per lot, drift, exports, charts, CLI."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from inspector import statistics as st
from inspector.cli import main
from inspector.errors import StoreError
from inspector.results import DefectRegion, InspectionResult, Verdict
from inspector.store import Store

T0 = 1_790_000_000.0


def _result(i: int, *, lot: str, verdict: Verdict, score: float, regions: tuple[DefectRegion, ...] = ()
            ) -> InspectionResult:
    return InspectionResult(frame_id=i, timestamp=T0 + i, source="cam", recipe="part", model_version="v1",
                            verdict=verdict, score=score, regions=regions, lot=lot, line="L1")


def _region(x: int, y: int, *, predicted: str | None, confidence: float | None = 0.9) -> DefectRegion:
    return DefectRegion(x=x, y=y, width=10, height=10, area_px=80, area_mm2=None, max_score=0.9, mean_score=0.7,
                        predicted_class=predicted, type_confidence=confidence)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Lots A-E of 100 parts at 5 % FAIL, lot F at 30 %: scratches top left, dents bottom right."""
    s = Store(tmp_path / "stats.db")
    i = 0
    for lot, n_fail in (("A", 5), ("B", 5), ("C", 5), ("D", 5), ("E", 5), ("F", 30)):
        for k in range(100):
            if k < n_fail:
                kind = "scratch" if k % 3 else "dent"
                xy = (5, 5) if kind == "scratch" else (80, 85)
                regions = (_region(*xy, predicted=kind),)
                s.record(_result(i, lot=lot, verdict=Verdict.FAIL, score=0.9, regions=regions))
            else:
                s.record(_result(i, lot=lot, verdict=Verdict.PASS, score=0.2 + 0.001 * (k % 7)))
            i += 1
    s.flush()
    yield s
    s.close()


def test_pareto_counts_types_and_a_reviewers_class_wins_over_the_guess(store: Store) -> None:
    rows = st.defect_pareto(store, st.Filters(recipe="part"))
    assert [(r.defect_type, r.parts, r.regions) for r in rows] == [("scratch", 35, 35), ("dent", 20, 20)]
    assert rows[0].share == pytest.approx(35 / 55) and rows[-1].cumulative_share == pytest.approx(1.0)
    region_id = store.inspections(recipe="part", verdict="FAIL", limit=1)[0].regions[0].id
    store.set_defect_class("crack", user="qa", region_id=region_id)
    best = {r.defect_type: r.parts for r in st.defect_pareto(store)}
    assert best["crack"] == 1 and best["dent"] + best["scratch"] == 54
    assert {r.defect_type for r in st.defect_pareto(store, source="confirmed")} == {"crack", st.UNTYPED}
    assert st.defect_pareto(store, st.Filters(lot="nope")) == []


@pytest.mark.parametrize("rollups", [True, False], ids=["rollups", "detail rows"])
def test_pareto_counts_a_part_once_per_type_however_many_fragments_it_has(tmp_path: Path, rollups: bool) -> None:
    """One scratch found as nine fragments is one scratched part; two parts with a dent each outrank it."""
    with Store(tmp_path / "parts.db") as writer:
        scratched = tuple(_region(5 + 12 * k, 5, predicted="scratch") for k in range(9))
        writer.record(_result(0, lot="A", verdict=Verdict.FAIL, score=0.9, regions=scratched))
        for i in (1, 2):
            writer.record(_result(i, lot="A", verdict=Verdict.FAIL, score=0.9,
                                  regions=(_region(80, 85, predicted="dent"),)))
        both = (_region(5, 5, predicted="scratch"), _region(80, 85, predicted="dent"), _region(60, 5, predicted=None))
        writer.record(_result(3, lot="A", verdict=Verdict.REVIEW, score=0.6, regions=both))
        writer.flush()
        first = writer.inspections(limit=10)[-1]                           # newest first: part 0
        scratch_id = first.regions[0].id                                     # one of its fragments
    with Store(tmp_path / "parts.db", rollups=rollups) as store:
        rows = st.defect_pareto(store)
        assert [(r.defect_type, r.parts, r.regions) for r in rows] == [
            ("dent", 3, 3), ("scratch", 2, 10), (st.UNTYPED, 1, 1)]
        assert rows[0].share == pytest.approx(3 / 6) and rows[1].cumulative_share == pytest.approx(5 / 6)
        assert [(r.defect_type, r.parts) for r in st.defect_pareto(store, st.Filters(), source="predicted")] == [
            ("dent", 3), ("scratch", 2), (st.UNTYPED, 1)]
        # a reviewer calls one fragment a crack: the part is now scratched and cracked, still one scratched part
        store.set_defect_class("crack", user="qa", region_id=scratch_id)
        best = {r.defect_type: (r.parts, r.regions) for r in st.defect_pareto(store)}
        assert best == {"dent": (3, 3), "scratch": (2, 9), "crack": (1, 1), st.UNTYPED: (1, 1)}
        confirmed = {r.defect_type: r.parts for r in st.defect_pareto(store, source="confirmed")}
        assert confirmed == {"crack": 1, st.UNTYPED: 4}
        # the whole part relabelled: no scratch left on it
        store.set_defect_class("crack", user="qa", inspection_id=first.id)
        best = {r.defect_type: (r.parts, r.regions) for r in st.defect_pareto(store)}
        assert best == {"dent": (3, 3), "crack": (1, 9), "scratch": (1, 1), st.UNTYPED: (1, 1)}
        window = st.defect_pareto(store, st.Filters(since=T0 + 1, until=T0 + 3))      # parts 1 and 2
        assert [(r.defect_type, r.parts) for r in window] == [("dent", 2)]


def test_location_map_puts_each_type_where_it_sits_in_roi_coordinates(store: Store) -> None:
    where = st.defect_locations(store, (0, 0, 100, 100), grid=(10, 10))
    assert where.counts["scratch"][1, 1] == 35 and where.counts["scratch"].sum() == 35
    assert where.counts["dent"][9, 8] == 20 and where.outside == 0
    shifted = st.defect_locations(store, (50, 50, 50, 50), grid=(5, 5))   # an ROI over the bottom right
    assert shifted.outside == 35 and shifted.counts["dent"][4, 3] == 20
    with pytest.raises(ValueError, match="width and height >= 1"):
        st.defect_locations(store, (0, 0, 0, 10))
    reference = np.full((100, 100, 3), 128, np.uint8)
    heat = st.location_heat_image(reference, where.total())
    assert heat.shape == reference.shape
    assert not np.array_equal(heat[15, 15], reference[15, 15]) and np.array_equal(heat[50, 20], reference[50, 20])


def test_fail_rate_p_chart_per_lot_alarms_on_the_bad_lot(store: Store) -> None:
    groups = st.fail_rate_groups(store, st.Filters(recipe="part"), by="lot")
    assert groups == [("A", 100, 5), ("B", 100, 5), ("C", 100, 5), ("D", 100, 5), ("E", 100, 5), ("F", 100, 30)]
    chart = st.fail_rate_chart(store, st.Filters(recipe="part"), by="lot", centre=0.05)
    assert [(a.rule, a.key) for a in chart.alarms] == [("beyond_3sigma", "F")]
    hourly = st.fail_rate_chart(store, st.Filters(recipe="part"), by="hour")
    assert sum(p.n for p in hourly.points) == 600
    shifts = st.fail_rate_groups(store, st.Filters(recipe="part"), by="shift")   # the store's shifts
    assert shifts == [(r.key, r.inspected - r.errors, r.failed)
                      for r in store.yield_summary(group_by="shift", recipe="part")]
    assert sum(n for _, n, _ in shifts) == 600 and sum(f for _, _, f in shifts) == 55
    with pytest.raises(ValueError, match="'lot', 'hour' or 'shift'"):
        st.fail_rate_groups(store, st.Filters(recipe="part"), by="week")  # type: ignore[arg-type]


def test_error_rows_stay_out_of_the_fail_rate(store: Store) -> None:
    """A frame that could not be inspected is neither a good nor a failed part: the p-chart, like the yield,
    counts judged parts only; a lot of ERROR rows only has no point."""
    for i in range(40):
        store.record(_result(1000 + i, lot="F", verdict=Verdict.ERROR, score=float("nan")))
        store.record(_result(2000 + i, lot="G", verdict=Verdict.ERROR, score=float("nan")))
    store.flush()
    groups = dict((k, (n, f)) for k, n, f in st.fail_rate_groups(store, st.Filters(recipe="part"), by="lot"))
    assert groups["F"] == (100, 30) and "G" not in groups
    for by in ("hour", "shift"):
        rows = st.fail_rate_groups(store, st.Filters(recipe="part"), by=by)  # type: ignore[arg-type]
        assert sum(n for _, n, _ in rows) == 600, by


def test_drift_compares_recent_pass_scores_with_the_teaching_scores(store: Store) -> None:
    taught_here = np.random.default_rng(0).normal(0.203, 0.002, 64)
    taught_darker = np.random.default_rng(0).normal(0.15, 0.01, 64)
    flt = st.Filters(recipe="part")
    assert not st.good_score_drift(store, flt, taught_here, review_threshold=0.5).drifted  # type: ignore[union-attr]
    moved = st.good_score_drift(store, flt, taught_darker, review_threshold=0.5)
    assert moved is not None and moved.drifted and moved.n_recent == 500
    # a version taught since (its own, darker scale) judges only the parts it scored: none yet, so no alarm
    assert st.good_score_drift(store, flt, taught_darker, review_threshold=0.5, model_version="v2") is None
    same = st.good_score_drift(store, flt, taught_darker, review_threshold=0.5, model_version="v1")
    assert same is not None and same.drifted and same.n_recent == 500
    # the score chart against v2's taught mean and sigma: v2 scored nothing yet
    assert st.score_chart(store, flt, mean=0.15, sigma=0.01, model_version="v2").points == ()
    assert len(st.score_chart(store, flt, mean=0.15, sigma=0.01, model_version="v1").points) == 545   # PASS only
    assert len(st.score_chart(store, flt, mean=0.15, sigma=0.01).points) == 545


def test_the_score_chart_watches_the_good_parts_and_does_not_repeat_the_fail_verdicts(store: Store) -> None:
    """Over every score each FAIL raised "beyond 3 sigma" (it is a FAIL for that): the alarms repeated the verdicts.
    The chart now holds the parts judged good; there a run of 8 above the taught mean is the process moving."""
    flt = st.Filters(recipe="part")
    steady = st.score_chart(store, flt, mean=0.203, sigma=0.002)
    assert all(p.value < 0.5 for p in steady.points)
    assert [a.rule for a in steady.alarms if a.rule == "beyond_3sigma"] == []       # 55 FAIL at 0.9: none
    for k in range(8):                                     # good parts creeping up, all still PASS
        store.record(_result(5000 + k, lot="G", verdict=Verdict.PASS, score=0.2062 + 0.0001 * (k % 2)))
    store.flush()
    moved = st.score_chart(store, dataclasses.replace(flt, lot="G"), mean=0.203, sigma=0.002)
    assert [a.rule for a in moved.alarms] == ["run_of_8"] and "high" in moved.alarms[0].message


def test_exports_write_regions_with_confirmed_and_predicted_types(store: Store, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    region_id = store.inspections(recipe="part", verdict="FAIL", limit=1)[0].regions[0].id
    store.set_defect_class("=crack", user="qa", region_id=region_id)     # a formula-looking class
    n = st.export_regions_csv(store, tmp_path / "regions.csv", st.Filters(lot="F"))
    with (tmp_path / "regions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert n == len(rows) == 30
    assert {r["predicted_class"] for r in rows} == {"scratch", "dent"} and rows[0]["lot"] == "F"
    by_id = {int(r["region_id"]): r for r in rows}
    assert by_id[region_id]["defect_class"] == "'=crack" == by_id[region_id]["defect_type"]   # not a formula
    assert all(r["defect_type"] == r["predicted_class"] for i, r in by_id.items() if i != region_id)
    counts = st.export_parquet(store, tmp_path / "pq")
    assert counts == {"inspections": 600, "regions": 55}
    regions = pq.read_table(tmp_path / "pq" / "regions.parquet").to_pylist()
    labelled = next(r for r in regions if r["region_id"] == region_id)
    assert labelled["defect_class"] == "=crack" and labelled["predicted_class"] in ("scratch", "dent")
    assert pq.read_table(tmp_path / "pq" / "inspections.parquet").num_rows == 600
    assert st.export_parquet(store, tmp_path / "empty", st.Filters(lot="nope")) == {"inspections": 0, "regions": 0}
    with pytest.raises(Exception, match="cannot write"):
        st.export_regions_csv(store, tmp_path / "missing" / "r.csv")


def test_an_export_that_fails_midway_keeps_the_old_file(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "exports").mkdir()
    target = tmp_path / "exports" / "regions.csv"
    target.write_text("the export of yesterday\n", encoding="utf-8")
    real_batches = st._batches

    def failing_batches(*args: Any, **kwargs: Any) -> Any:
        yield from itertools.islice(real_batches(*args, **kwargs), 1)
        msg = "database connection lost"
        raise RuntimeError(msg)

    monkeypatch.setattr(st, "_batches", failing_batches)
    with pytest.raises(RuntimeError, match="connection lost"):
        st.export_regions_csv(store, target)
    assert target.read_text(encoding="utf-8") == "the export of yesterday\n"
    assert [p.name for p in target.parent.iterdir()] == ["regions.csv"]     # no temporary file left


def test_charts_are_valid_svg(store: Store) -> None:
    pareto = ET.fromstring(st.pareto_svg(st.defect_pareto(store)))
    assert pareto.tag.endswith("svg") and len(pareto.findall("{http://www.w3.org/2000/svg}rect")) == 3
    chart = st.fail_rate_chart(store, by="lot", centre=0.05)
    svg = ET.fromstring(st.control_chart_svg(chart, percent=True))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(svg.findall(f"{ns}circle")) == 1       # the alarm point
    # as the app draws it (the export had sloped limits between groups, no group names and no value axis):
    # each group's limits over its own place, its name under it, the rates in per cent
    n = len(chart.points)
    ucl = [line for line in svg.findall(f"{ns}polyline") if line.get("stroke") == "#d9534f"][0]
    corners = [tuple(map(float, xy.split(","))) for xy in ucl.get("points").split()]
    assert len(corners) == 2 * n and all(corners[2 * i][1] == corners[2 * i + 1][1] for i in range(n))
    texts = [t.text or "" for t in svg.iter(f"{ns}text")]
    assert {p.key for p in chart.points} <= set(texts) and any(t.endswith(" %") for t in texts)
    assert st.control_chart_svg(chart).count(" %<") == 0      # not a rate: no per cent
    ET.fromstring(st.pareto_svg([]))


def test_stats_command_prints_pareto_and_alarm_and_writes_exports(store: Store, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = store.url.database
    store.close()
    reference = tmp_path / "good.png"
    cv2.imwrite(str(reference), np.full((100, 100, 3), 128, np.uint8))
    out = tmp_path / "charts"
    code = main(["stats", "--store", str(db), "--recipe", "part", "--charts", str(out), "--reference",
                 str(reference), "--regions-csv", str(tmp_path / "r.csv"), "--parquet", str(tmp_path / "pq")])
    text = capsys.readouterr().out
    assert code == 0
    assert "scratch" in text and "63.6 %" in text and "ALARM beyond_3sigma" in text and "at F" in text
    assert {p.name for p in out.iterdir()} == {"pareto.svg", "fail_rate.svg", "locations.png"}
    assert "wrote 55 region(s)" in text and "600 inspection(s) and 55 region(s)" in text


def test_teaching_scores_read_only_their_tensor_and_a_broken_file_is_named(taught_recipe: Path) -> None:
    from inspector.recipe import load_recipe
    from inspector.versions import resolve_version

    folder = resolve_version(load_recipe(taught_recipe)).path
    scores, review, mean, std = st.teaching_scores(folder)
    assert scores.dtype == np.float32 and scores.size >= 2 and np.all(np.isfinite(scores))
    assert review > 0 and mean == pytest.approx(float(scores.mean()), rel=1e-4) and std > 0
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StoreError, match=r"cannot read the teaching scores .*teach the recipe again"):
        st.teaching_scores(folder)


def test_stats_draws_the_location_map_over_the_recipes_taught_picture(store: Store, tmp_path: Path,
                                                                       taught_recipe: Path) -> None:
    db = store.url.database
    store.close()
    out = tmp_path / "charts"
    assert main(["stats", "--store", str(db), "--recipe", "part", "--recipe-file", str(taught_recipe),
                 "--charts", str(out)]) == 0
    written = cv2.imread(str(out / "locations.png"), cv2.IMREAD_COLOR)
    assert written is not None and written.shape == (84, 84, 3)    # the taught good image's size (no ROI)
    # a version from before versions kept a picture: no location map without --reference, the rest as before
    from inspector.recipe import load_recipe
    from inspector.versions import REFERENCE_FILE, resolve_version

    (resolve_version(load_recipe(taught_recipe)).path / REFERENCE_FILE).unlink()
    again = tmp_path / "again"
    assert main(["stats", "--store", str(db), "--recipe", "part", "--recipe-file", str(taught_recipe),
                 "--charts", str(again)]) == 0
    assert {p.name for p in again.iterdir()} == {"pareto.svg", "fail_rate.svg"}


def test_location_reference_cuts_a_frame_to_the_roi_clipped_to_the_frame() -> None:
    frame = np.arange(60 * 80 * 3, dtype=np.uint32).reshape(60, 80, 3).astype(np.uint8)
    crop, area = st.location_reference(frame, (10, 20, 30, 25), is_roi=False) or (None, None)
    assert area == (10, 20, 30, 25) and np.array_equal(crop, frame[20:45, 10:40])
    # an ROI drawn past the frame's top-left and bottom-right: the part inside, its area as large as the picture
    crop, area = st.location_reference(frame, (-5, -8, 40, 100), is_roi=False) or (None, None)
    assert area == (0, 0, 35, 60) and np.array_equal(crop, frame[:, :35]) and crop.flags["C_CONTIGUOUS"]
    assert st.location_reference(frame, (100, 0, 10, 10), is_roi=False) is None     # misses the frame
    assert st.location_reference(frame, (-20, 0, 10, 10), is_roi=False) is None
    whole, area = st.location_reference(frame, None, is_roi=False) or (None, None)
    assert area == (0, 0, 80, 60) and np.array_equal(whole, frame)
    # a version's reference.png is the ROI already: placed at the ROI's corner, not cut again
    taught = frame[:25, :30]
    picture, area = st.location_reference(taught, (10, 20, 30, 25), is_roi=True) or (None, None)
    assert picture is taught and area == (10, 20, 30, 25)


def test_the_location_map_says_when_its_positions_are_not_places_on_the_part(
    store: Store, tmp_path: Path, taught_recipe: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from inspector.recipe import load_recipe
    from inspector.versions import resolve_version

    model_dir = resolve_version(load_recipe(taught_recipe)).path
    assert st.location_caveat(model_dir) is None                # parts taught as they come
    assert st.location_caveat(tmp_path / "no model here") is None
    manifest = json.loads((model_dir / "model.json").read_text())
    manifest["state"]["rotations_used"] = True                  # as when the teach step chose turned views
    (model_dir / "model.json").write_text(json.dumps(manifest))
    caveat = st.location_caveat(model_dir)
    assert caveat is not None and "where in the frame, not where on the part" in caveat
    db = store.url.database
    store.close()
    capsys.readouterr()
    assert main(["stats", "--store", str(db), "--recipe", "part", "--recipe-file", str(taught_recipe),
                 "--charts", str(tmp_path / "charts")]) == 0
    assert f"locations.png shows {caveat}" in capsys.readouterr().out
