"""Roll-ups of the statistics store: counts kept in step with the detail rows, so that statistics over a whole
store of millions of inspections read thousands of rows.

Four tables (`inspector.store.schema`):

- ``inspection_counts``: inspections per recipe, line, station, lot, 15-minute bucket and verdict, with the
  group's first time (yield per any key, the FAIL-rate p-chart per lot, hour or shift);
- ``region_counts``: defect regions per recipe, line, station, lot, bucket, confirmed and predicted class (counts
  per class);
- ``location_counts``: defect regions per recipe, line, station, confirmed and predicted class and centre cell of
  `LOCATION_CELL_PX` frame pixels (the location map; no time or lot: a time window or a lot reads the detail rows).
- ``part_counts`` (schema 5): inspections with at least one region of a type, and those regions, per recipe,
  line, station, lot, bucket, type source and type (the Pareto: defective parts, not fragments).

Upkeep has one rule, `add_inspections` (`add_matching` for a range of ids): it counts the chosen detail rows in
SQL (the same grouping the queries use) and adds the counts to the roll-ups (an upsert), in the caller's
transaction. The writer calls it for each batch it inserts, a reviewer's relabelling subtracts the old classes
(`recount_regions`, ``sign=-1``) and adds the new ones (the part counts: over every region of the inspections
touched, since a part's types are those of all its regions), and the schema-4 and -5 migrations build the roll-ups
of an existing store with it (`build`, in chunks, with progress). The store never deletes inspections; a future
deletion must subtract them the same way.

Reading: `inspection_groups`, `region_class_counts`, `part_type_counts` and `location_grid_counts` answer the
usual filters (recipe, line, station, lot, verdict, since, until). A window whose ends fall inside a 15-minute
bucket reads those partial buckets from the detail rows (an index range of minutes) and the whole buckets between
them from the roll-up, so the answer equals the detail query's (tests/inspector/test_rollup.py checks that after random
inserts and relabellings, on SQLite and PostgreSQL).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, get_args

import sqlalchemy as sa

from inspector.errors import StoreError
from inspector.results import Progress
from inspector.store.schema import (
    BUCKET_S,
    LOCATION_CELL_PX,
    bucket,
    inspection_counts,
    inspections,
    location_counts,
    part_counts,
    region_counts,
    regions,
)

__all__ = [
    "ALL_TABLES",
    "UNTYPED",
    "TypeSource",
    "add_inspections",
    "add_matching",
    "build",
    "inspection_groups",
    "location_grid_counts",
    "part_type_counts",
    "recount_regions",
    "region_class_counts",
    "type_expression",
]

logger = logging.getLogger("inspector.store")

_COUNTS: Final = ("n", "regions")     # the roll-ups' additive columns
BUILD_CHUNK: Final = 50_000       # ours: inspections per step when an existing store's roll-ups are built
_NAMES: Final = ("recipe", "line", "station", "lot")

ClassKey = tuple[str | None, str | None]          # (confirmed class, predicted class); None = none
TypeSource = Literal["best", "confirmed", "predicted"]   # whose type a statistic counts
UNTYPED: Final = "untyped"        # neither a reviewer nor the typer gave the region a type
ALL_TABLES: Final = ("inspection_counts", "region_counts", "location_counts", "part_counts")


def _bucket_of_time() -> sa.ColumnElement[int]:
    return bucket(inspections.c.time / sa.literal_column(str(BUCKET_S)))


# Constants are literal SQL, not parameters: PostgreSQL must see the grouped expression and the selected one as
# the same text.


def _cell(position: sa.ColumnElement[Any], size: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    # floor of the doubled centre over the doubled cell (centres are >= 0: SQLite's truncation is the floor)
    return bucket((position + position + size) / sa.literal_column(str(2 * LOCATION_CELL_PX)))


def _no_null(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    return sa.func.coalesce(column, sa.literal_column("''"))


def type_expression(source: TypeSource) -> sa.ColumnElement[str]:
    """A region's type as ``source`` gives it (``best``: the reviewer's class, else the typer's), `UNTYPED` when
    none; literal SQL, so that PostgreSQL sees the grouped and the selected expression as one.

    Raises:
        ValueError: an unknown source.
    """
    untyped: sa.ColumnElement[str] = sa.literal_column(f"'{UNTYPED}'")
    if source == "confirmed":
        return sa.func.coalesce(regions.c.defect_class, untyped)
    if source == "predicted":
        return sa.func.coalesce(regions.c.predicted_class, untyped)
    if source == "best":
        return sa.func.coalesce(regions.c.defect_class, regions.c.predicted_class, untyped)
    msg = f"unknown type source {source!r}; use best, confirmed or predicted"
    raise ValueError(msg)


# --------------------------------------------------------------------------------------------- upkeep


def _inspection_stmt(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
    keys = [*(inspections.c[k] for k in _NAMES), _bucket_of_time().label("bucket"), inspections.c.verdict]
    return (sa.select(*keys, sa.func.count().label("n"), sa.func.min(inspections.c.time).label("first_time"))
            .where(where).group_by(*keys))


def _region_stmts(where: sa.ColumnElement[bool]) -> list[tuple[sa.Table, sa.Select[Any]]]:
    joined = regions.join(inspections, inspections.c.id == regions.c.inspection_id)
    classes = [_no_null(regions.c.defect_class).label("defect_class"),
               _no_null(regions.c.predicted_class).label("predicted_class")]
    by_time = [*(inspections.c[k] for k in _NAMES), _bucket_of_time().label("bucket"), *classes]
    by_cell = [*(inspections.c[k] for k in _NAMES[:3]), *classes,
               _cell(regions.c.x, regions.c.w).label("cell_x"), _cell(regions.c.y, regions.c.h).label("cell_y")]
    return [
        (region_counts, sa.select(*by_time, sa.func.count().label("n")).select_from(joined).where(where)
         .group_by(*by_time)),
        (location_counts, sa.select(*by_cell, sa.func.count().label("n")).select_from(joined).where(where)
         .group_by(*by_cell)),
    ]


def _part_stmts(where: sa.ColumnElement[bool]) -> list[tuple[sa.Table, sa.Select[Any]]]:
    """Per type source: inspections with a region of each type, of the inspections matching ``where`` (whole
    inspections: a condition that picks some of an inspection's regions would count it by those alone)."""
    joined = regions.join(inspections, inspections.c.id == regions.c.inspection_id)
    keys = [*(inspections.c[k] for k in _NAMES), _bucket_of_time().label("bucket")]
    out = []
    for source in get_args(TypeSource):
        kind = type_expression(source)
        # the source is selected, not grouped: PostgreSQL refuses a constant in GROUP BY
        stmt = (sa.select(*keys, sa.literal_column(f"'{source}'").label("source"), kind.label("defect_type"),
                          sa.func.count(sa.distinct(inspections.c.id)).label("n"), sa.func.count().label("regions"))
                .select_from(joined).where(where).group_by(*keys, kind))
        out.append((part_counts, stmt))
    return out


def add_inspections(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Add these inspections and their regions to the roll-ups.

    Call it once per inspection, in the transaction that inserted it (the writer: once per batch). The statements
    are built once (`_by_ids`): building them costs more than running them for a batch of a few results.
    """
    if not ids:
        return
    inspection_stmt, region_stmts = _by_ids()
    params = {"ids": list(ids)}
    _add(conn, inspection_counts, inspection_stmt, 1, params)
    for table, stmt in region_stmts:
        _add(conn, table, stmt, 1, params)


@functools.cache
def _by_ids() -> tuple[sa.Select[Any], list[tuple[sa.Table, sa.Select[Any]]]]:
    where = inspections.c.id.in_(sa.bindparam("ids", expanding=True))
    return _inspection_stmt(where), _region_stmts(where) + _part_stmts(where)


def add_matching(conn: sa.Connection, where: sa.ColumnElement[bool], tables: Sequence[str] = ALL_TABLES) -> None:
    """Add the inspections matching ``where`` (a condition on ``inspections``) and their regions to the roll-ups
    named in ``tables`` (`build`: a range of ids)."""
    if "inspection_counts" in tables:
        _add(conn, inspection_counts, _inspection_stmt(where), 1)
    for table, stmt in _region_stmts(where) + _part_stmts(where):
        if table.name in tables:
            _add(conn, table, stmt, 1)


def recount_regions(conn: sa.Connection, where: sa.ColumnElement[bool], sign: int) -> None:
    """Add (``sign=1``) or subtract (``-1``) the regions matching ``where`` (on ``regions`` joined with
    ``inspections``) to or from the region roll-ups, and their inspections (every region of them) to or from the
    part counts: around an update of their classes, subtract before, add after."""
    # not correlated: the part statements select from the same two tables
    touched = inspections.c.id.in_(
        sa.select(regions.c.inspection_id).select_from(
            regions.join(inspections, inspections.c.id == regions.c.inspection_id)).where(where).correlate(None))
    for table, stmt in _region_stmts(where) + _part_stmts(touched):
        _add(conn, table, stmt, sign)


def _add(conn: sa.Connection, table: sa.Table, stmt: sa.Select[Any], sign: int,
         params: dict[str, Any] | None = None) -> None:
    rows = [dict(r) for r in conn.execute(stmt, params).mappings()]
    if not rows:
        return
    keys = [c.name for c in table.primary_key.columns]
    for row in rows:
        for count in _COUNTS:
            if count in row:
                row[count] = sign * int(row[count])
    # a fixed order: two stations adding to the same groups lock their rows in one order (no deadlock)
    rows.sort(key=lambda r: tuple(r[k] for k in keys))
    conn.execute(_upsert(conn.dialect.name, table), rows)
    if sign < 0:      # a group counted down to nothing leaves no row behind
        gone = sa.delete(table).where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in keys), table.c.n <= 0)
        conn.execute(gone, [{f"k_{k}": r[k] for k in keys} for r in rows])


@functools.cache
def _upsert(dialect: str, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET n = n + excluded.n`` (and regions; first_time: the smaller),
    built once."""
    keys = [c.name for c in table.primary_key.columns]
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt: Any = sqlite_insert(table)
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table)
    else:
        msg = f"the statistics store's roll-ups need SQLite or PostgreSQL, not {dialect}"
        raise StoreError(msg)
    update: dict[str, Any] = {c: table.c[c] + stmt.excluded[c] for c in _COUNTS if c in table.c}
    if "first_time" in table.c:
        update["first_time"] = sa.case((stmt.excluded.first_time < table.c.first_time, stmt.excluded.first_time),
                                       else_=table.c.first_time)
    return stmt.on_conflict_do_update(index_elements=keys, set_=update)


def build(conn: sa.Connection, chunk: int = BUILD_CHUNK, tables: Sequence[str] = ALL_TABLES) -> Iterator[Progress]:
    """Count every inspection and region of an existing store into the empty roll-ups named in ``tables`` (a
    migration: those it creates), ``chunk`` inspections a step.

    Yields:
        `Progress` after each step (inspections counted so far of the store's id range).
    """
    low, high = conn.execute(sa.select(sa.func.min(inspections.c.id), sa.func.max(inspections.c.id))).one()
    if low is None:
        return
    total = int(high) - int(low) + 1
    for start in range(int(low), int(high) + 1, chunk):
        add_matching(conn, inspections.c.id.between(start, start + chunk - 1), tables)
        done = min(total, start + chunk - int(low))
        yield Progress(done=done, total=total, message=f"statistics roll-ups: {done:,} of {total:,} inspection ids")


# --------------------------------------------------------------------------------------------- reading


def _time_split(since: float | None, until: float | None, table: sa.Table
                ) -> tuple[list[sa.ColumnElement[bool]] | None, list[list[sa.ColumnElement[bool]]]]:
    """Split ``since <= time < until`` into whole buckets (conditions on the roll-up ``table``; None: none)
    and the partial buckets at its ends (condition lists on ``inspections``)."""
    time, b = inspections.c.time, _bucket_of_time()
    first = None if since is None else math.floor(since / BUCKET_S) + 1    # the first whole bucket after since
    end = None if until is None else math.floor(until / BUCKET_S)         # the bucket holding until
    if first is not None and end is not None and first >= end:
        return None, [[time >= since, time < until]]                       # a window of minutes: detail only
    whole: list[sa.ColumnElement[bool]] = []
    edges: list[list[sa.ColumnElement[bool]]] = []
    if first is not None:
        whole.append(table.c.bucket >= first)
        # time bounds for the index, the bucket for the exact split
        edges.append([time >= since, time < (first + 1) * BUCKET_S, b < first])
    if end is not None:
        whole.append(table.c.bucket < end)
        edges.append([time >= (end - 1) * BUCKET_S, time < until, b >= end])
    return whole, edges


def _verdict_window(flt: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
    """The detail rows' conditions for a verdict filter (which no region roll-up keeps) and its time window."""
    conds = [inspections.c.verdict == str(getattr(flt["verdict"], "value", flt["verdict"]))]
    if flt.get("since") is not None:
        conds.append(inspections.c.time >= flt["since"])
    if flt.get("until") is not None:
        conds.append(inspections.c.time < flt["until"])
    return conds


def _equal(table: sa.Table, flt: Mapping[str, Any], names: Sequence[str]) -> list[sa.ColumnElement[bool]]:
    return [table.c[k] == flt[k] for k in names if flt.get(k) is not None]


def inspection_groups(conn: sa.Connection, flt: Mapping[str, Any], names: Sequence[str], *, by_time: bool
                      ) -> dict[tuple[tuple[str, ...], int | None, str], tuple[int, float]]:
    """Inspections per (values of ``names``, bucket or None, verdict): (count, first time).

    Args:
        flt: the usual filters (``inspector.store.InspectionFilter``: recipe, line, station, lot, verdict,
            since, until; a missing key or None = any).
        names: keys among recipe, line, station, lot.
        by_time: also group by 15-minute bucket.
    """
    verdict = flt.get("verdict")
    cond = {**flt, "verdict": None if verdict is None else str(getattr(verdict, "value", verdict))}
    whole, edges = _time_split(flt.get("since"), flt.get("until"), inspection_counts)
    out: dict[tuple[tuple[str, ...], int | None, str], tuple[int, float]] = {}

    width = len(names)

    def merge(rows: Any) -> None:
        # plain tuples (*names, [bucket], verdict, n, first time): this loop runs once per bucket and verdict
        for r in rows:
            key = (tuple(r[:width]), int(r[width]) if by_time else None, r[-3])
            found = out.get(key)
            if found is None:
                out[key] = (int(r[-2]), float(r[-1]))
            else:
                out[key] = (found[0] + int(r[-2]), min(found[1], float(r[-1])))

    if whole is not None:
        t = inspection_counts
        whole_keys = [*(t.c[k] for k in names), *([t.c.bucket] if by_time else []), t.c.verdict]
        stmt = (sa.select(*whole_keys, sa.func.sum(t.c.n).label("n"),
                          sa.func.min(t.c.first_time).label("first_time"))
                .where(*_equal(t, cond, (*_NAMES, "verdict")), *whole).group_by(*whole_keys))
        merge(conn.execute(stmt))
    for edge in edges:
        keys = [*(inspections.c[k] for k in names), *([_bucket_of_time().label("bucket")] if by_time else []),
                inspections.c.verdict]
        stmt = (sa.select(*keys, sa.func.count().label("n"), sa.func.min(inspections.c.time).label("first_time"))
                .where(*_equal(inspections, cond, (*_NAMES, "verdict")), *edge).group_by(*keys))
        merge(conn.execute(stmt))
    return out


def region_class_counts(conn: sa.Connection, flt: Mapping[str, Any]) -> dict[ClassKey, int]:
    """Defect regions per (confirmed class, predicted class) of the inspections the filters select."""
    joined = regions.join(inspections, inspections.c.id == regions.c.inspection_id)
    out: dict[ClassKey, int] = {}

    def merge(rows: Any) -> None:
        for confirmed, predicted, n in rows:
            key = (confirmed or None, predicted or None)
            out[key] = out.get(key, 0) + int(n)

    detail_keys = [regions.c.defect_class, regions.c.predicted_class]
    if flt.get("verdict") is not None:        # the roll-up has no verdict: the detail rows
        conds = _equal(inspections, flt, _NAMES) + _verdict_window(flt)
        merge(conn.execute(sa.select(*detail_keys, sa.func.count()).select_from(joined).where(*conds)
                           .group_by(*detail_keys)))
        return out
    whole, edges = _time_split(flt.get("since"), flt.get("until"), region_counts)
    if whole is not None:
        t = region_counts
        keys = [t.c.defect_class, t.c.predicted_class]
        merge(conn.execute(sa.select(*keys, sa.func.sum(t.c.n)).where(*_equal(t, flt, _NAMES), *whole)
                           .group_by(*keys)))
    for edge in edges:
        merge(conn.execute(sa.select(*detail_keys, sa.func.count()).select_from(joined)
                           .where(*_equal(inspections, flt, _NAMES), *edge).group_by(*detail_keys)))
    return out


def part_type_counts(conn: sa.Connection, flt: Mapping[str, Any], source: TypeSource) -> dict[str, tuple[int, int]]:
    """Per type (as ``source`` gives it): the inspections with at least one region of it among those the filters
    select, and those regions; from the part roll-up where it can, the detail rows for a verdict and for partial
    buckets."""
    kind = type_expression(source)
    joined = regions.join(inspections, inspections.c.id == regions.c.inspection_id)
    out: dict[str, tuple[int, int]] = {}

    def merge(rows: Any) -> None:
        for name, parts, n_regions in rows:
            before = out.get(str(name), (0, 0))
            out[str(name)] = (before[0] + int(parts), before[1] + int(n_regions))

    def detail(*conds: sa.ColumnElement[bool]) -> None:
        merge(conn.execute(sa.select(kind, sa.func.count(sa.distinct(inspections.c.id)), sa.func.count())
                           .select_from(joined).where(*_equal(inspections, flt, _NAMES), *conds).group_by(kind)))

    if flt.get("verdict") is not None:        # the roll-up has no verdict: the detail rows
        detail(*_verdict_window(flt))
        return out
    whole, edges = _time_split(flt.get("since"), flt.get("until"), part_counts)
    if whole is not None:
        t = part_counts
        merge(conn.execute(sa.select(t.c.defect_type, sa.func.sum(t.c.n), sa.func.sum(t.c.regions))
                           .where(*_equal(t, flt, _NAMES), t.c.source == source, *whole).group_by(t.c.defect_type)))
    for edge in edges:
        detail(*edge)
    return out


def location_grid_counts(conn: sa.Connection, flt: Mapping[str, Any], area: tuple[int, int, int, int],
                         grid: tuple[int, int]) -> dict[tuple[str | None, str | None, int, int], int] | None:
    """Regions per (confirmed class, predicted class, grid row, grid column) over ``area`` (x, y, width, height
    in frame pixels) cut into ``grid`` (rows, columns) cells, each roll-up cell counted at its middle; row and
    column -1 for the regions outside. None when the filters need what the location roll-up does not keep (a
    lot, a verdict, a time window)."""
    if any(flt.get(k) is not None for k in ("lot", "verdict", "since", "until")):
        return None
    x0, y0, width, height = area
    rows_n, cols_n = grid
    t = location_counts
    # the cell's middle, doubled (2 * (cell * L + L / 2)), relative to the area, in grid units, as the detail
    # query computes a region's centre
    cx = (t.c.cell_x * (2 * LOCATION_CELL_PX) + (LOCATION_CELL_PX - 2 * x0)) * cols_n
    cy = (t.c.cell_y * (2 * LOCATION_CELL_PX) + (LOCATION_CELL_PX - 2 * y0)) * rows_n
    inside = sa.and_(cx >= 0, cx < 2 * width * cols_n, cy >= 0, cy < 2 * height * rows_n)
    col = sa.case((inside, bucket(cx / (2 * width))), else_=-1).label("grid_col")
    row = sa.case((inside, bucket(cy / (2 * height))), else_=-1).label("grid_row")
    stmt = (sa.select(t.c.defect_class, t.c.predicted_class, row, col, sa.func.sum(t.c.n))
            .where(*_equal(t, flt, _NAMES[:3]))
            .group_by(t.c.defect_class, t.c.predicted_class, sa.text("grid_row"), sa.text("grid_col")))
    return {(r[0] or None, r[1] or None, int(r[2]), int(r[3])): int(r[4]) for r in conn.execute(stmt)}
