"""Reading the statistics store: yield per group, defects per class, score charts, pages of inspections.

`StoreQueries` is the read side of `inspector.store.Store` (a mixin: the store supplies the engine,
its name, the time zone and the shift plan). The frozen records it returns (`YieldRow`, `ScorePoint`,
`InspectionRecord` with its `RegionRecord` and `FeedbackRecord`) cross threads safely.
`inspection_conditions` is the one translation of the usual filters into SQL, for the other query
modules (``inspector.statistics``, the CSV export) too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, TypedDict, Unpack

import sqlalchemy as sa

from inspector.errors import StoreError
from inspector.results import Verdict, VerdictCounts
from inspector.store.rollup import inspection_groups, region_class_counts
from inspector.store.schema import BUCKET_S, bucket, feedback, inspections, regions

__all__ = [
    "UNCLASSIFIED",
    "FeedbackRecord",
    "GroupBy",
    "InspectionFilter",
    "InspectionRecord",
    "RegionRecord",
    "ScorePoint",
    "StoreQueries",
    "YieldRow",
    "check_id",
    "inspection_conditions",
    "parse_shift_start",
]

GroupBy = Literal["recipe", "line", "station", "lot", "hour", "shift", "day"]
_NAME_KEYS: Final = ("recipe", "line", "station", "lot")
_TIME_KEYS: Final = ("hour", "shift", "day")
UNCLASSIFIED: Final = "unclassified"      # defects_by_class key for regions nobody has classified yet
_VERDICT_SLOT: Final = {Verdict.PASS.value: 0, Verdict.REVIEW.value: 1, Verdict.FAIL.value: 2,
                        Verdict.ERROR.value: 3}


@dataclass(frozen=True, kw_only=True)
class YieldRow:
    """Counts of one group (``inspected`` includes ERROR rows); ``yield_pct``: `inspector.results.VerdictCounts`."""

    key: str                 # recipe/line/lot, or local time: "2026-11-23 14:00", "2026-11-23 06:00-14:00";
                             # with several group keys their values joined by " / "
    inspected: int
    passed: int
    review: int
    failed: int
    errors: int
    yield_pct: float
    keys: tuple[str, ...] = field(default=(), compare=False)   # each group key's value, in the order asked


class ScorePoint(NamedTuple):
    """One scored inspection, for the score-over-time chart."""

    time: float              # seconds since the epoch
    score: float
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class RegionRecord:
    """A stored defect region (field names as `inspector.results.DefectRegion`)."""

    id: int
    inspection_id: int
    x: int
    y: int
    width: int
    height: int
    area_px: int
    area_mm2: float | None
    max_score: float | None
    mean_score: float | None
    defect_class: str | None
    classified_by: str | None = None
    classified_at: float | None = None
    predicted_class: str | None = None       # the typer's guess at inspection time (None: no typer)
    predicted_confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord:
    """A reviewer's label for an inspection."""

    id: int
    inspection_id: int
    label: str               # "good" or a defect class
    user: str
    time: float
    note: str


@dataclass(frozen=True, kw_only=True)
class InspectionRecord:
    """A stored inspection with its regions and feedback (oldest feedback first)."""

    id: int
    time: float
    recipe: str
    model_version: str
    line: str
    station: str
    lot: str
    source: str
    frame_id: int
    path: str | None
    verdict: Verdict
    score: float | None
    latency_ms: float | None
    image_path: str | None
    overlay_path: str | None
    error: str | None
    regions: tuple[RegionRecord, ...] = ()
    feedback: tuple[FeedbackRecord, ...] = ()

    @property
    def label(self) -> str | None:
        """The latest feedback label, or None when nobody has reviewed it."""
        return self.feedback[-1].label if self.feedback else None


class StoreQueries:
    """The read side of `inspector.store.Store`; every query opens its own connection."""

    # set by Store.__init__
    _engine: sa.Engine
    _tz: dt.tzinfo | None
    _shift_start_min: int
    _shift_min: int
    display_name: str
    rollups: bool     # answer counts from the roll-ups (inspector.store.rollup); False: from the detail rows

    def yield_summary(
        self,
        *,
        group_by: GroupBy | Sequence[GroupBy] = "recipe",
        recipe: str | None = None,
        line: str | None = None,
        lot: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[YieldRow]:
        """Inspected / passed / review / failed / error counts and yield per group.

        Args:
            group_by: one key or several (``("line", "station", "recipe")``): ``recipe``, ``line``,
                ``station``, ``lot`` (sorted by name) and at most one of ``hour``, ``shift``, ``day``
                (local time, in time order; a shift belongs to the day it started). Several keys give
                one row per combination, ``key`` joined by " / " and ``keys`` apart.
            recipe, line, lot, station: only inspections with this value.
            since, until: only inspections with ``since <= time < until`` (seconds since the epoch).

        Raises:
            ValueError: an unknown key, or more than one time key.
        """
        keys = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        unknown = [k for k in keys if k not in _NAME_KEYS + _TIME_KEYS]
        times = [k for k in keys if k in _TIME_KEYS]
        if not keys or unknown or len(times) > 1 or len(set(keys)) != len(keys):
            msg = (f"unknown or repeated group_by {', '.join(keys) or '(none)'}; use one or more of "
                   f"{', '.join(_NAME_KEYS)} and at most one of {', '.join(_TIME_KEYS)}")
            raise ValueError(msg)
        names = [k for k in keys if k in _NAME_KEYS]
        flt: InspectionFilter = {"recipe": recipe, "line": line, "lot": lot, "station": station, "since": since,
                                 "until": until}
        groups: dict[tuple[str, ...], list[int]] = {}
        if self.rollups:
            with self._engine.connect() as conn:
                found = inspection_groups(conn, flt, names, by_time=bool(times))
            time_keys: dict[int, str] = {}         # a bucket's local hour/shift/day, worked out once
            # the group's place in ``keys``: a name's value, or the time key (index len(names))
            order = [names.index(k) if k in names else len(names) for k in keys]
            for (named_values, b, verdict), (n, _) in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
                group_values = named_values
                if times:
                    b = b or 0
                    if b not in time_keys:
                        time_keys[b] = self._time_key(b * BUCKET_S, times[0])
                    group_values = (*named_values, time_keys[b])
                acc = groups.setdefault(tuple(str(group_values[i]) for i in order), [0, 0, 0, 0, 0])
                acc[0] += n
                acc[1 + _VERDICT_SLOT[verdict]] += n
            return [_yield_row(k, *v) for k, v in groups.items()]
        conds = inspection_conditions(**flt)
        counts = [
            sa.func.count().label("inspected"),
            *(sa.func.sum(sa.case((inspections.c.verdict == v.value, 1), else_=0)).label(v.value.lower())
              for v in (Verdict.PASS, Verdict.REVIEW, Verdict.FAIL, Verdict.ERROR)),
        ]
        columns = [inspections.c[k].label(f"k_{k}") for k in names]
        if times:   # 15-minute buckets in SQL, mapped to local hours/shifts/days here
            columns.append(bucket(inspections.c.time / sa.literal_column(str(BUCKET_S))).label("k_time"))
        stmt = (sa.select(*columns, *counts).where(*conds)
                .group_by(*(sa.text(c.name) for c in columns)).order_by(*(sa.text(c.name) for c in columns)))
        with self._engine.connect() as conn:
            for r in conn.execute(stmt).mappings():
                values: dict[str, str] = {k: str(r[f"k_{k}"]) for k in names}
                if times:
                    values[times[0]] = self._time_key(int(r["k_time"]) * BUCKET_S, times[0])
                acc = groups.setdefault(tuple(values[k] for k in keys), [0, 0, 0, 0, 0])
                for i, n in enumerate((r["inspected"], r["pass"], r["review"], r["fail"], r["error"])):
                    acc[i] += int(n or 0)
        return [_yield_row(k, *v) for k, v in groups.items()]

    def _time_key(self, t: float, group_by: str) -> str:
        local = dt.datetime.fromtimestamp(t, tz=self._tz)
        if group_by == "hour":
            return local.strftime("%Y-%m-%d %H:00")
        if group_by == "day":
            return local.strftime("%Y-%m-%d")
        since_start = local - dt.timedelta(minutes=self._shift_start_min)   # wall-clock arithmetic
        index = (since_start.hour * 60 + since_start.minute) // self._shift_min
        begin = self._shift_start_min + index * self._shift_min
        return f"{since_start:%Y-%m-%d} {_hhmm(begin)}-{_hhmm(begin + self._shift_min)}"

    def defects_by_class(self, **filters: Unpack[InspectionFilter]) -> list[tuple[str, int]]:
        """Defect regions per class, most frequent first; unclassified regions count as ``"unclassified"``."""
        totals: dict[str, int] = {}
        if self.rollups:
            with self._engine.connect() as conn:
                for (confirmed, _), n in region_class_counts(conn, filters).items():
                    key = confirmed or UNCLASSIFIED
                    totals[key] = totals.get(key, 0) + n
            return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        conds = inspection_conditions(**filters)
        stmt = (sa.select(regions.c.defect_class, sa.func.count().label("n"))
                .select_from(regions.join(inspections, regions.c.inspection_id == inspections.c.id))
                .where(*conds).group_by(regions.c.defect_class))
        with self._engine.connect() as conn:
            for name, n in conn.execute(stmt):
                key = name if name is not None else UNCLASSIFIED
                totals[key] = totals.get(key, 0) + int(n)
        return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))

    def score_series(
        self,
        *,
        recipe: str | None = None,
        line: str | None = None,
        lot: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 5000,
        model_version: str | None = None,
        verdict: Verdict | None = None,
    ) -> list[ScorePoint]:
        """The newest ``limit`` scored inspections, oldest first (ERROR results have no score); with
        ``model_version``, only those that version scored (each version's scores are on its own scale); with
        ``verdict``, only those judged so."""
        conds = inspection_conditions(recipe=recipe, line=line, lot=lot, since=since, until=until, verdict=verdict)
        if model_version is not None:
            conds.append(inspections.c.model_version == model_version)
        stmt = (sa.select(inspections.c.time, inspections.c.score, inspections.c.verdict)
                .where(inspections.c.score.is_not(None), *conds)
                .order_by(inspections.c.time.desc(), inspections.c.id.desc()).limit(max(0, limit)))
        with self._engine.connect() as conn:
            points = [ScorePoint(t, s, Verdict(v)) for t, s, v in conn.execute(stmt)]
        points.reverse()
        return points

    def score_histogram(self, *, bins: int = 30,
                        **filters: Unpack[InspectionFilter]) -> tuple[list[float], list[int]]:
        """Histogram of image scores, counted in the database.

        Returns:
            ``(edges, counts)``: ``bins + 1`` ascending bin edges from the lowest to the highest score
            and ``bins`` counts (the last bin includes its upper edge); ``([], [])`` when no
            inspection has a score.
        """
        if bins < 1:
            msg = f"score_histogram: bins must be >= 1, got {bins}"
            raise ValueError(msg)
        conds = [inspections.c.score.is_not(None),
                 *inspection_conditions(**filters)]
        with self._engine.connect() as conn:
            lo, hi = conn.execute(sa.select(sa.func.min(inspections.c.score),
                                            sa.func.max(inspections.c.score)).where(*conds)).one()
            if lo is None:
                return [], []
            lo, hi = float(lo), float(hi)
            width = (hi - lo) / bins if hi > lo else 1.0 / bins
            index = bucket((inspections.c.score - lo) / width).label("b")
            stmt = sa.select(index, sa.func.count().label("n")).where(*conds).group_by(sa.text("b"))
            counts = [0] * bins
            for b, n in conn.execute(stmt):
                counts[min(max(int(b), 0), bins - 1)] += int(n)
        edges = [lo + i * width for i in range(bins + 1)]
        return edges, counts

    def inspections(self, *, limit: int = 200, offset: int = 0,
                    **filters: Unpack[InspectionFilter]) -> list[InspectionRecord]:
        """A page of inspections, newest first, each with its regions and feedback."""
        conds = inspection_conditions(**filters)
        stmt = (sa.select(inspections).where(*conds)
                .order_by(inspections.c.time.desc(), inspections.c.id.desc())
                .limit(max(0, limit)).offset(max(0, offset)))
        with self._engine.connect() as conn:
            rows = list(conn.execute(stmt).mappings())
            return self._records(conn, rows)

    def get_inspection(self, inspection_id: int) -> InspectionRecord:
        """One inspection with its regions and feedback.

        Raises:
            StoreError: if there is no inspection with that id.
        """
        check_id(inspection_id, self.display_name)
        with self._engine.connect() as conn:
            stmt = sa.select(inspections).where(inspections.c.id == inspection_id)
            rows = list(conn.execute(stmt).mappings())
            if not rows:
                msg = f"no inspection with id {inspection_id} in {self.display_name}"
                raise StoreError(msg)
            return self._records(conn, rows)[0]

    def _records(self, conn: sa.Connection, rows: Sequence[sa.RowMapping]) -> list[InspectionRecord]:
        ids = [r["id"] for r in rows]
        by_regions: dict[int, list[RegionRecord]] = {i: [] for i in ids}
        by_feedback: dict[int, list[FeedbackRecord]] = {i: [] for i in ids}
        if ids:
            for r in conn.execute(sa.select(regions).where(regions.c.inspection_id.in_(ids))
                                  .order_by(regions.c.id)).mappings():
                by_regions[r["inspection_id"]].append(RegionRecord(
                    id=r["id"], inspection_id=r["inspection_id"], x=r["x"], y=r["y"], width=r["w"],
                    height=r["h"], area_px=r["area_px"], area_mm2=r["area_mm2"], max_score=r["max_score"],
                    mean_score=r["mean_score"], defect_class=r["defect_class"],
                    classified_by=r["classified_by"], classified_at=r["classified_at"],
                    predicted_class=r["predicted_class"], predicted_confidence=r["predicted_confidence"]))
            for r in conn.execute(sa.select(feedback).where(feedback.c.inspection_id.in_(ids))
                                  .order_by(feedback.c.time, feedback.c.id)).mappings():
                by_feedback[r["inspection_id"]].append(FeedbackRecord(**r))
        return [InspectionRecord(
            id=r["id"], time=r["time"], recipe=r["recipe"], model_version=r["model_version"], line=r["line"],
            station=r["station"], lot=r["lot"], source=r["source"], frame_id=r["frame_id"], path=r["path"],
            verdict=Verdict(r["verdict"]), score=r["score"], latency_ms=r["latency_ms"],
            image_path=r["image_path"], overlay_path=r["overlay_path"], error=r["error"],
            regions=tuple(by_regions[r["id"]]), feedback=tuple(by_feedback[r["id"]]),
        ) for r in rows]


class InspectionFilter(TypedDict, total=False):
    """The usual filters of the store's queries, as keyword arguments (an absent key or None = any)."""

    recipe: str | None
    line: str | None
    lot: str | None
    station: str | None
    verdict: Verdict | str | None
    since: float | None          # seconds since the epoch, inclusive
    until: float | None          # seconds since the epoch, exclusive


def inspection_conditions(**filters: Unpack[InspectionFilter]) -> list[sa.ColumnElement[bool]]:
    """SQL conditions on ``inspections`` for the usual filters (None = any); for other query modules."""
    conds: list[sa.ColumnElement[bool]] = []
    for column in ("recipe", "line", "lot", "station"):
        value = filters.get(column)
        if value is not None:
            conds.append(inspections.c[column] == value)
    verdict, since, until = filters.get("verdict"), filters.get("since"), filters.get("until")
    if verdict is not None:
        conds.append(inspections.c.verdict == Verdict(verdict).value)
    if since is not None:
        conds.append(inspections.c.time >= since)
    if until is not None:
        conds.append(inspections.c.time < until)
    return conds


def _yield_row(keys: tuple[str, ...], inspected: int, passed: int, review: int, failed: int,
               errors: int) -> YieldRow:
    pct = VerdictCounts(passed=passed, review=review, failed=failed, errors=errors).yield_pct or 0.0
    return YieldRow(key=" / ".join(keys), keys=keys, inspected=inspected, passed=passed, review=review,
                    failed=failed, errors=errors, yield_pct=pct)


def parse_shift_start(text: str) -> int:
    try:
        hours, minutes = (int(part) for part in text.split(":"))
    except ValueError:
        hours, minutes = -1, -1
    if not (0 <= hours < 24 and 0 <= minutes < 60) or minutes % 15:
        msg = f"Store: shift_start must be a local time HH:MM on a quarter hour such as '06:00', got {text!r}"
        raise ValueError(msg)
    return hours * 60 + minutes


def _hhmm(minutes: int) -> str:
    minutes %= 24 * 60
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def check_id(row_id: int, where: str, kind: str = "inspection") -> None:
    """Refuse an id no row can have (SQLite's INTEGER is signed 64-bit; ids start at 1)."""
    if not 1 <= row_id < 2**63:
        msg = f"no {kind} with id {row_id} in {where} (ids are whole numbers from 1)"
        raise StoreError(msg)
