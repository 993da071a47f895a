"""Statistics that lead to action, read from the store: Pareto of defect types, where on the part, SPC, drift.

Every query aggregates in SQL (counts per type, per location cell, per lot or hour) so that a store of
millions of inspections returns a few hundred rows; none pulls the regions themselves. The counts come from
the store's roll-ups (`inspector.store.rollup`: counts per recipe, line, station, lot, 15 minutes, verdict and
class, kept by every write) unless the store was opened with ``rollups=False``; the location map reads the
detail rows for a time window or a lot, and for a grid finer than the roll-up's 8-px cells. The app runs these
off the GUI thread; ``benchmarks/stats_scale.py`` times them on 1,000,000 inspections.

A region's type for statistics is the reviewer's class when there is one, else the typer's guess,
else ``untyped`` (`TypeSource` picks confirmed or predicted only). The Pareto counts parts (inspections with a
region of the type), not regions: one defect found as several fragments is one defective part.

Exports: CSV and Parquet of inspections and regions with their types (`export_regions_csv`,
`export_parquet`), charts as SVG (`pareto_svg`, `control_chart_svg`) and the location map as PNG
(`location_heat_image`).

Example:
    >>> flt = Filters(recipe="fryum", since=time.time() - 86400)        # doctest: +SKIP
    >>> for row in defect_pareto(store, flt): print(row.defect_type, row.parts, row.cumulative_share)
    >>> chart = fail_rate_chart(store, flt, by="lot")
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import html
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import numpy as np
import sqlalchemy as sa

from inspector._csv import csv_cell
from inspector.errors import StoreError
from inspector.overlay import location_heat_image
from inspector.results import Verdict
from inspector.spc import ControlChart, DriftReport, individuals_chart, p_chart, score_drift
from inspector.store import inspection_conditions, inspections, regions
from inspector.store.rollup import (
    UNTYPED,
    TypeSource,
    inspection_groups,
    location_grid_counts,
    part_type_counts,
    type_expression,
)
from inspector.store.schema import LOCATION_CELL_PX, bucket
from models.files import atomic_open, atomic_open_text

if TYPE_CHECKING:
    from inspector.store import Store

__all__ = [
    "UNTYPED",
    "Filters",
    "SpcGroup",
    "Insights",
    "insights",
    "LocationMap",
    "ParetoRow",
    "TypeSource",
    "control_chart_svg",
    "defect_locations",
    "defect_pareto",
    "export_parquet",
    "export_regions_csv",
    "fail_rate_chart",
    "good_score_drift",
    "location_caveat",
    "location_heat_image",
    "location_reference",
    "pareto_svg",
    "score_chart",
    "teaching_scores",
]

SpcGroup = Literal["lot", "hour", "shift"]     # groups of the FAIL-rate p-chart (shifts: the store's shift_start)

LOCATION_GRID: Final = (48, 48)   # ours: cells of the location map (rows, columns) over the ROI
DRIFT_RECENT: Final = 500         # ours: the newest PASS scores compared with the teaching scores
_EXPORT_BATCH: Final = 10_000     # rows per fetch and per Parquet row group


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Which inspections a statistic covers (None = any)."""

    recipe: str | None = None
    line: str | None = None
    lot: str | None = None
    station: str | None = None
    since: float | None = None    # seconds since the epoch, inclusive
    until: float | None = None    # exclusive

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        return inspection_conditions(**dataclasses.asdict(self))


@dataclass(frozen=True, kw_only=True)
class ParetoRow:
    """One bar of the Pareto chart: the parts with a defect of this type (a part with nine fragments of one scratch
    is one scratched part; a part with a scratch and a dent counts once in each bar)."""

    defect_type: str
    parts: int                # inspections with at least one region of this type: the bar
    regions: int              # the regions of this type (fragments included)
    share: float              # of all the bars' parts, [0, 1]
    cumulative_share: float   # this and every bigger bar, [0, 1]


def _type_of(classes: tuple[str | None, str | None], source: TypeSource) -> str:
    """The Python twin of `type_expression`, for counts per (confirmed, predicted) class read from the roll-ups."""
    confirmed, predicted = classes
    if source == "confirmed":
        return confirmed or UNTYPED
    if source == "predicted":
        return predicted or UNTYPED
    return confirmed or predicted or UNTYPED


def _region_select(*columns: Any, flt: Filters) -> sa.Select[Any]:
    stmt = sa.select(*columns).select_from(regions)
    conds = flt.conditions()
    if conds:
        stmt = stmt.join(inspections, inspections.c.id == regions.c.inspection_id).where(*conds)
    return stmt


def defect_pareto(store: Store, flt: Filters = Filters(), *, source: TypeSource = "best") -> list[ParetoRow]:
    """Defective parts per type, most frequent first, with share and cumulative share, and each type's regions."""
    type_expression(source)          # checks the source's name
    if store.rollups:
        with store.engine.connect() as conn:
            found = part_type_counts(conn, dataclasses.asdict(flt), source)
    else:
        kind = type_expression(source).label("kind")
        stmt = _region_select(kind, sa.func.count(sa.distinct(regions.c.inspection_id)).label("parts"),
                              sa.func.count().label("n"), flt=flt).group_by(sa.text("kind"))
        with store.engine.connect() as conn:
            found = {str(k): (int(p), int(n)) for k, p, n in conn.execute(stmt)}
    parts = {k: p for k, (p, _) in found.items()}
    by_region = {k: n for k, (_, n) in found.items()}
    order = sorted(parts, key=lambda k: (-parts[k], -by_region.get(k, 0), k))
    total = sum(parts.values())
    out, running = [], 0
    for name in order:
        running += parts[name]
        out.append(ParetoRow(defect_type=name, parts=parts[name], regions=by_region.get(name, 0),
                             share=parts[name] / total, cumulative_share=running / total))
    return out


@dataclass(frozen=True, kw_only=True)
class LocationMap:
    """Where defects sit on the part: region centres counted on a grid over the ROI."""

    area: tuple[int, int, int, int]       # (x, y, width, height) of the ROI in frame pixels
    counts: dict[str, np.ndarray]         # type -> (rows, cols) int64 counts of region centres
    outside: int                          # regions whose centre lies outside the area
    cell_px: int = 1                      # centres placed to this many pixels: 1 from the detail rows,
                                          # LOCATION_CELL_PX from the roll-up (each at the middle of its cell)

    def total(self) -> np.ndarray:
        """(rows, cols) counts over all types."""
        grids = list(self.counts.values())
        return np.sum(grids, axis=0) if grids else np.zeros(LOCATION_GRID, np.int64)


def location_caveat(model_dir: Path) -> str | None:
    """A sentence for the location map when its positions are not places on the part, else None.

    The map counts region centres in the ROI's pixels over one good picture. When the recipe's model learned its
    good parts turned (the teach step chose turned views: the parts come at any angle), the same spot of the part
    lands anywhere in the frame, so the map says where in the frame, not where on the part. None also when the
    model version cannot be read (the map is drawn as before; the screen names that problem elsewhere).
    """
    from models.manifest import read_manifest

    try:
        state = read_manifest(model_dir).get("state") or {}
    except (OSError, ValueError):
        return None
    if isinstance(state, dict) and state.get("rotations_used"):
        return ("where in the frame, not where on the part: this recipe's parts come turned (its model learned "
                "them at any angle)")
    return None


def location_reference(image_bgr: np.ndarray, roi: tuple[int, int, int, int] | None, *, is_roi: bool
                       ) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The good picture under the location map and its area in frame pixels (``defect_locations``' ``area``).

    Args:
        image_bgr: a whole frame of a good part, or (``is_roi``) a picture that already is the ROI's crop
            (a version's ``reference.png``).
        roi: the recipe's ROI bounding box (x, y, w, h) in frame pixels; None: the whole frame.
        is_roi: ``image_bgr`` is the ROI already; else it is cut to the ROI, clipped to the frame.

    Returns:
        (picture, area), the area as large as the picture; None when the ROI misses the frame.
    """
    if is_roi:
        x, y = roi[:2] if roi is not None else (0, 0)
        return image_bgr, (max(0, x), max(0, y), image_bgr.shape[1], image_bgr.shape[0])
    height, width = image_bgr.shape[:2]
    x, y, w, h = roi or (0, 0, width, height)
    x0, y0 = max(0, x), max(0, y)
    crop = image_bgr[y0 : max(y0, y + h), x0 : max(x0, x + w)]
    if crop.size == 0:
        return None
    return np.ascontiguousarray(crop), (x0, y0, crop.shape[1], crop.shape[0])


def defect_locations(
    store: Store, area: tuple[int, int, int, int], flt: Filters = Filters(), *, source: TypeSource = "best",
    grid: tuple[int, int] = LOCATION_GRID,
) -> LocationMap:
    """Count region centres per type on a ``grid`` over ``area`` (the recipe's ROI, frame pixels).

    The cells are computed in SQL (``GROUP BY`` type, row, column), so only the occupied cells come back.

    Raises:
        ValueError: an area with no width or height, or a grid with no cells.
    """
    x0, y0, width, height = area
    rows_n, cols_n = grid
    if width < 1 or height < 1 or rows_n < 1 or cols_n < 1:
        msg = f"location map needs an area with width and height >= 1 and a grid >= 1x1, got {area} and {grid}"
        raise ValueError(msg)
    if store.rollups and width >= LOCATION_CELL_PX * cols_n and height >= LOCATION_CELL_PX * rows_n:
        with store.engine.connect() as conn:
            cells = location_grid_counts(conn, dataclasses.asdict(flt), area, grid)
        if cells is not None:
            counts: dict[str, np.ndarray] = {}
            outside = 0
            for (confirmed, predicted, r, c), n in cells.items():
                if r < 0 or c < 0:
                    outside += n
                else:
                    kind_name = _type_of((confirmed, predicted), source)
                    counts.setdefault(kind_name, np.zeros(grid, np.int64))[r, c] += n
            return LocationMap(area=area, counts=counts, outside=outside, cell_px=LOCATION_CELL_PX)
    kind = type_expression(source).label("kind")
    # centre in the area, scaled to cells; 2 * (x - x0) + w avoids a float division per row
    cx = (2 * (regions.c.x - x0) + regions.c.w) * cols_n
    cy = (2 * (regions.c.y - y0) + regions.c.h) * rows_n
    inside = sa.and_(cx >= 0, cx < 2 * width * cols_n, cy >= 0, cy < 2 * height * rows_n)
    # floor, not CAST: PostgreSQL's CAST rounds, which put a centre near an edge one cell past the grid
    col = sa.case((inside, bucket(cx / (2 * width))), else_=-1).label("col")
    row = sa.case((inside, bucket(cy / (2 * height))), else_=-1).label("row")
    stmt = (_region_select(kind, row, col, sa.func.count().label("n"), flt=flt)
            .group_by(sa.text("kind"), sa.text("row"), sa.text("col")))
    counts = {}
    outside = 0
    with store.engine.connect() as conn:
        for name, r, c, n in conn.execute(stmt):
            if r < 0 or c < 0:
                outside += int(n)
                continue
            counts.setdefault(str(name), np.zeros(grid, np.int64))[int(r), int(c)] += int(n)
    return LocationMap(area=area, counts=counts, outside=outside)


# --------------------------------------------------------------------------------------------- SPC


def fail_rate_groups(store: Store, flt: Filters = Filters(), *, by: SpcGroup = "lot"
                     ) -> list[tuple[str, int, int]]:
    """``(key, judged, failed)`` per lot (in order of each lot's first part), per local hour or per shift.

    ``judged`` counts the parts that got a verdict (PASS, REVIEW, FAIL): an ERROR row (a frame that could not be
    inspected) is neither a failed nor a good part, so it stays out of the FAIL rate, as it stays out of the yield
    (``inspector.results.VerdictCounts``). A group of ERROR rows only is left out.
    """
    if by in ("hour", "shift"):
        rows = store.yield_summary(group_by=by, **dataclasses.asdict(flt))
        return [(r.key, r.inspected - r.errors, r.failed) for r in rows if r.inspected > r.errors]
    if by != "lot":
        msg = f"p-chart groups must be 'lot', 'hour' or 'shift', got {by!r}"
        raise ValueError(msg)
    if store.rollups:
        with store.engine.connect() as conn:
            found = inspection_groups(conn, dataclasses.asdict(flt), ["lot"], by_time=False)
        lots: dict[str, list[float]] = {}      # lot -> [judged, failed, first time]
        for ((lot,), _, verdict), (n, first) in found.items():
            acc = lots.setdefault(lot, [0, 0, first])
            acc[0] += n if verdict != Verdict.ERROR.value else 0
            acc[1] += n if verdict == Verdict.FAIL.value else 0
            acc[2] = min(acc[2], first)
        ordered = sorted(lots.items(), key=lambda kv: (kv[1][2], kv[0]))
        return [(lot or "(no lot)", int(judged), int(fails)) for lot, (judged, fails, _) in ordered if judged]
    failed = sa.func.sum(sa.case((inspections.c.verdict == Verdict.FAIL.value, 1), else_=0))
    judged = sa.func.sum(sa.case((inspections.c.verdict != Verdict.ERROR.value, 1), else_=0))
    stmt = (sa.select(inspections.c.lot, judged, failed, sa.func.min(inspections.c.time).label("t0"))
            .where(*flt.conditions()).group_by(inspections.c.lot).order_by(sa.text("t0")))
    with store.engine.connect() as conn:
        return [(str(lot) or "(no lot)", int(n), int(f or 0)) for lot, n, f, _ in conn.execute(stmt) if n]


def fail_rate_chart(store: Store, flt: Filters = Filters(), *, by: SpcGroup = "lot",
                    centre: float | None = None) -> ControlChart:
    """p-chart of the FAIL rate per lot, hour or shift, with its alarms."""
    return p_chart(fail_rate_groups(store, flt, by=by), centre=centre, recipe=flt.recipe or "")


def score_chart(store: Store, flt: Filters, *, mean: float, sigma: float, limit: int = 2000,
                model_version: str | None = None) -> ControlChart:
    """Individuals chart of the newest ``limit`` good parts' scores (PASS) against the taught mean and sigma; with
    ``model_version`` (the version taught with that mean and sigma), only the scores that version gave.

    Only the parts judged good: a FAIL lies beyond the limits by what it is, and the verdict and the p-chart count
    it already (over every score, the demo recipe's 16 test images raised 10 alarms for their 9 FAIL). Among the
    good parts a point beyond the limits, a run of 8 on one side or a trend of 6 says the product, the light or the
    camera moves before defects are missed.
    """
    points = store.score_series(recipe=flt.recipe, line=flt.line, lot=flt.lot, since=flt.since,
                                until=flt.until, limit=limit, model_version=model_version, verdict=Verdict.PASS)
    keys = [dt.datetime.fromtimestamp(p.time).isoformat(timespec="seconds") for p in points]
    return individuals_chart([p.score for p in points], mean=mean, sigma=sigma, keys=keys,
                             recipe=flt.recipe or "")


def teaching_scores(model_dir: Path) -> tuple[np.ndarray, float, float, float]:
    """The good images' leave-one-out scores of a saved model version, and its review threshold.

    Returns:
        ((N,) float32 scores, review threshold, good mean, good std) from ``model.safetensors`` and
        ``model.json``.

    Raises:
        StoreError: the model version cannot be read (naming the file and how to fix it).
    """
    from safetensors import SafetensorError, safe_open

    from models.manifest import MODEL_JSON, MODEL_TENSORS, read_manifest

    try:
        thresholds = read_manifest(model_dir)["thresholds"]
        # only this one tensor: the file also holds the memory bank (hundreds of MB), and the Statistics
        # screen asks on every refresh
        with safe_open(str(model_dir / MODEL_TENSORS), framework="numpy") as tensors:
            scores = tensors.get_tensor("train_scores").astype(np.float32)
        return scores, float(thresholds["review"]), float(thresholds["good_mean"]), float(thresholds["good_std"])
    except (OSError, ValueError, KeyError, SafetensorError) as exc:   # a missing tensor, a corrupt file
        msg = (f"{model_dir}: cannot read the teaching scores ({MODEL_TENSORS}, {MODEL_JSON}): {exc}; "
               "teach the recipe again or pick another model version")
        raise StoreError(msg) from exc


def good_score_drift(store: Store, flt: Filters, teaching_scores: np.ndarray, *, review_threshold: float,
                     recent: int = DRIFT_RECENT, model_version: str | None = None) -> DriftReport | None:
    """The newest PASS scores against the teaching (leave-one-out) scores below the review threshold.

    Both sides are cut at the review threshold: a PASS score is below it by definition, so an uncut
    teaching distribution would look like drift. ``model_version``: only the parts that version scored (the
    version the teaching scores come from); another version's scores are on its own scale, and a version taught
    anew would otherwise raise a drift alarm on the old version's parts.
    """
    conds = [*flt.conditions(), inspections.c.verdict == Verdict.PASS.value, inspections.c.score.is_not(None)]
    if model_version is not None:
        conds.append(inspections.c.model_version == model_version)
    stmt = (sa.select(inspections.c.score).where(*conds)
            .order_by(inspections.c.time.desc()).limit(max(1, recent)))
    with store.engine.connect() as conn:
        scores = np.asarray([s for (s,) in conn.execute(stmt)], np.float64)
    taught = np.asarray(teaching_scores, np.float64)
    return score_drift(taught[taught < review_threshold], scores)


@dataclass(frozen=True, kw_only=True)
class Insights:
    """What the Statistics screen draws besides yield: computed on a worker thread, sent as one value."""

    pareto: tuple[ParetoRow, ...]
    fail_rate: ControlChart
    locations: LocationMap | None      # None without an area (no recipe ROI or reference image)
    seconds: float                     # time the queries took


def insights(store: Store, flt: Filters, *, by: SpcGroup = "lot",
             area: tuple[int, int, int, int] | None = None) -> Insights:
    """Pareto, FAIL-rate p-chart and (with an area) the location map for one filter, in one call."""
    import time

    start = time.perf_counter()
    pareto = tuple(defect_pareto(store, flt))
    chart = fail_rate_chart(store, flt, by=by)
    locations = defect_locations(store, area, flt) if area is not None else None
    return Insights(pareto=pareto, fail_rate=chart, locations=locations, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- export

_REGION_COLUMNS: Final = ("region_id", "inspection_id", "time", "local_time", "recipe", "line", "station", "lot",
                          "verdict", "score", "x", "y", "w", "h", "area_px", "area_mm2", "max_score",
                          "mean_score", "defect_class", "classified_by", "predicted_class",
                          "predicted_confidence", "defect_type")


def _region_rows_stmt(flt: Filters) -> sa.Select[Any]:
    return (sa.select(regions.c.id.label("region_id"), regions.c.inspection_id, inspections.c.time,
                      inspections.c.recipe, inspections.c.line, inspections.c.station, inspections.c.lot,
                      inspections.c.verdict, inspections.c.score, regions.c.x, regions.c.y, regions.c.w,
                      regions.c.h, regions.c.area_px, regions.c.area_mm2, regions.c.max_score,
                      regions.c.mean_score, regions.c.defect_class, regions.c.classified_by,
                      regions.c.predicted_class, regions.c.predicted_confidence,
                      type_expression("best").label("defect_type"))
            .join(inspections, inspections.c.id == regions.c.inspection_id)
            .where(*flt.conditions()).order_by(inspections.c.time, regions.c.id))


def _batches(store: Store, stmt: sa.Select[Any]) -> Iterator[list[dict[str, Any]]]:
    with store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_EXPORT_BATCH).execute(stmt).mappings()
        while batch := [dict(r) for r in result.fetchmany(_EXPORT_BATCH)]:
            yield batch


@contextmanager
def _atomic(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write ``path`` through ``models.files.atomic_open``: replaced only when the write succeeded."""
    try:
        with atomic_open(path) if "b" in mode else atomic_open_text(path) as handle:
            yield handle
    except OSError as exc:
        msg = f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is writable"
        raise StoreError(msg) from exc


def _local(t: float) -> str:
    return dt.datetime.fromtimestamp(t).isoformat(timespec="milliseconds")


def export_regions_csv(store: Store, path: str | Path, flt: Filters = Filters()) -> int:
    """One row per defect region with its inspection's fields, confirmed and predicted type; atomically.

    ``defect_type`` is the reviewer's class, else the typer's guess, else ``untyped``.

    Returns:
        The number of regions written.

    Raises:
        StoreError: the file cannot be written.
    """
    path = Path(path)
    count = 0
    with _atomic(path) as out:
        writer = csv.writer(out)
        writer.writerow(_REGION_COLUMNS)
        for batch in _batches(store, _region_rows_stmt(flt)):
            for row in batch:
                row["local_time"] = _local(row["time"])
                writer.writerow([csv_cell(row[c]) for c in _REGION_COLUMNS])
            count += len(batch)
    return count


def export_parquet(store: Store, folder: str | Path, flt: Filters = Filters()) -> dict[str, int]:
    """``inspections.parquet`` and ``regions.parquet`` (with types) in ``folder``, in row groups of 10,000.

    Returns:
        Rows written per file.

    Raises:
        StoreError: pyarrow is missing, or a file cannot be written.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        msg = "Parquet export needs pyarrow: pip install pyarrow"
        raise StoreError(msg) from exc
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_regions = (sa.select(sa.func.count()).where(regions.c.inspection_id == inspections.c.id)
                 .scalar_subquery().label("regions"))
    inspection_stmt = (sa.select(inspections, n_regions).where(*flt.conditions())
                       .order_by(inspections.c.time, inspections.c.id))
    float_cols = {"time", "score", "latency_ms", "area_mm2", "max_score", "mean_score", "predicted_confidence"}
    int_cols = {"id", "frame_id", "regions", "region_id", "inspection_id", "x", "y", "w", "h", "area_px"}

    def schema(columns: Sequence[str]) -> Any:
        return pa.schema([(c, pa.float64() if c in float_cols else pa.int64() if c in int_cols else pa.string())
                          for c in columns])

    written: dict[str, int] = {}
    jobs: list[tuple[str, sa.Select[Any], Callable[[dict[str, Any]], dict[str, Any]]]] = [
        ("inspections", inspection_stmt, lambda r: r),
        ("regions", _region_rows_stmt(flt), lambda r: {**r, "local_time": _local(r["time"])}),
    ]
    for name, stmt, shape in jobs:
        path = folder / f"{name}.parquet"
        columns = list(_REGION_COLUMNS) if name == "regions" else [*inspections.c.keys(), "regions"]
        count = 0
        with _atomic(path, "wb") as out:
            with pq.ParquetWriter(out, schema(columns)) as writer:
                for batch in _batches(store, stmt):
                    rows = [shape(r) for r in batch]
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema(columns)))
                    count += len(rows)
                if count == 0:
                    writer.write_table(schema(columns).empty_table())
        written[name] = count
    return written


# --------------------------------------------------------------------------------------------- charts

_SVG_W: Final = 720
_SVG_H: Final = 360
_PAD: Final = 48


def _svg(body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_W}" height="{_SVG_H}" '
            f'viewBox="0 0 {_SVG_W} {_SVG_H}" font-family="sans-serif" font-size="11">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{_SVG_W / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>'
            + "".join(body) + "</svg>\n")


def pareto_svg(rows: Sequence[ParetoRow], *, title: str = "Defective parts per type (Pareto)") -> str:
    """Bars of defective parts per type, most frequent first, with the cumulative share as a line (right axis, %)."""
    body: list[str] = []
    if rows:
        top = max(r.parts for r in rows)
        plot_w, plot_h = _SVG_W - 2 * _PAD, _SVG_H - 2 * _PAD - 20
        step = plot_w / len(rows)
        line = []
        for i, r in enumerate(rows):
            bar_h = plot_h * r.parts / top
            x = _PAD + i * step
            body.append(f'<rect x="{x + step * 0.1:.1f}" y="{_PAD + plot_h - bar_h:.1f}" width="{step * 0.8:.1f}" '
                        f'height="{bar_h:.1f}" fill="#4a7ab5"><title>{html.escape(r.defect_type)}: {r.parts} part(s), '
                        f'{r.regions} region(s)</title></rect>')
            body.append(f'<text x="{x + step / 2:.1f}" y="{_PAD + plot_h + 14}" text-anchor="middle">'
                        f'{html.escape(r.defect_type[:14])}</text>')
            body.append(f'<text x="{x + step / 2:.1f}" y="{_PAD + plot_h - bar_h - 4:.1f}" text-anchor="middle">'
                        f'{r.parts}</text>')
            line.append(f"{x + step / 2:.1f},{_PAD + plot_h * (1 - r.cumulative_share):.1f}")
            body.append(f'<text x="{x + step / 2 + 4:.1f}" y="{_PAD + plot_h * (1 - r.cumulative_share) + 14:.1f}" '
                        f'fill="#d9534f" font-size="10" stroke="white" stroke-width="3" paint-order="stroke">'
                        f'{100 * r.cumulative_share:.0f} %</text>')
        body.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#d9534f" stroke-width="2"/>')
        body.append(f'<text x="{_SVG_W - _PAD + 4}" y="{_PAD + 4}">100 %</text>')
    else:
        body.append(f'<text x="{_SVG_W / 2}" y="{_SVG_H / 2}" text-anchor="middle">no defect regions</text>')
    return _svg(body, title)


def _round_ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """About ``count`` values at a round step (1, 2 or 5 times a power of ten) between ``lo`` and ``hi``."""
    raw = (hi - lo) / count
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return np.arange(np.ceil(lo / step) * step, hi, step)


def control_chart_svg(chart: ControlChart, *, title: str | None = None, percent: bool = False) -> str:
    """The chart as the app draws it: each group's 3-sigma limits as steps over its own place (a group's limits
    follow its size), the centre line, the points joined and marked (a tooltip each), the alarm points in red
    with the alarm as their tooltip, a value axis, and the first, the last and about eight groups' names between.

    Args:
        chart: the control chart (`fail_rate_chart`, `score_chart`).
        title: the title; the chart's name when None.
        percent: the values are rates (a p-chart): written in per cent.
    """
    body: list[str] = []
    points = chart.points
    if not points:
        body.append(f'<text x="{_SVG_W / 2}" y="{_SVG_H / 2}" text-anchor="middle">no data</text>')
        return _svg(body, title or chart.name)
    scale, unit = (100.0, " %") if percent else (1.0, "")
    values = [v for p in points for v in (p.value, p.ucl, p.lcl) if np.isfinite(v)] or [0.0]
    lo, hi = min(values), max(values)
    margin = 0.05 * ((hi - lo) or abs(hi) or 1.0)
    lo, hi = lo - margin, hi + margin
    left, top = _PAD + 24, _PAD - 12                     # room for the value labels and the x axis' names
    plot_w, plot_h = _SVG_W - left - _PAD - 40, _SVG_H - top - _PAD
    step = plot_w / len(points)

    def x(i: float) -> float:
        return left + i * step

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    body.append(f'<path d="M{left},{top} V{top + plot_h} H{left + plot_w}" fill="none" stroke="#888"/>')
    for v in _round_ticks(lo, hi):
        body.append(f'<line x1="{left - 4}" x2="{left}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#888"/>'
                    f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v * scale:.3g}{unit}</text>')
    for attr, colour, name in (("ucl", "#d9534f", "UCL"), ("lcl", "#d9534f", "LCL"), ("centre", "#5cb85c", "centre")):
        levels = [float(getattr(p, attr)) for p in points]
        steps = " ".join(f"{x(i):.1f},{y(v):.1f} {x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(levels))
        body.append(f'<polyline points="{steps}" fill="none" stroke="{colour}" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{x(len(points)) + 4:.1f}" y="{y(levels[-1]) + 4:.1f}" fill="{colour}">{name}</text>')
    centres = [(x(i + 0.5), y(p.value)) for i, p in enumerate(points)]
    body.append(f'<polyline points="{" ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in centres)}" fill="none" '
                f'stroke="#333"/>')
    for (cx, cy), p in zip(centres, points, strict=True):
        body.append(f'<rect x="{cx - 2.5:.1f}" y="{cy - 2.5:.1f}" width="5" height="5" fill="#333"><title>'
                    f'{html.escape(p.key)}: {p.value * scale:.4g}{unit} of {p.n}</title></rect>')
    for alarm in chart.alarms:
        cx, cy = centres[alarm.index]
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#d9534f"><title>'
                    f'{html.escape(alarm.message)}</title></circle>')
    every = max(1, len(points) // 8)
    for i in sorted({*range(0, len(points), every), len(points) - 1}):
        body.append(f'<text x="{x(i + 0.5):.1f}" y="{top + plot_h + 14:.1f}" text-anchor="middle">'
                    f'{html.escape(points[i].key[:14])}</text>')
    return _svg(body, title or chart.name)
