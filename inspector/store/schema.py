"""The statistics store's tables, schema version and database connection (URL, engine, errors).

The tables are SQLAlchemy Core; each change of them is a migration in ``inspector/migrations/versions``
(Alembic) that also bumps `SCHEMA_VERSION`. `configured_url` finds a plant's shared store, `database_url`
turns what a caller gave into a URL, `create_engine` opens it (SQLite: WAL, FULL sync, foreign keys)
and `check_schema` creates or upgrades the tables in place and refuses a store made by a newer program.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from inspector import paths
from inspector.errors import StoreError

__all__ = [
    "BUCKET_S",
    "LOCATION_CELL_PX",
    "SCHEMA_VERSION",
    "STORE_URL_ENV",
    "STORE_URL_FILE_ENV",
    "WriteTransaction",
    "bucket",
    "check_schema",
    "configured_url",
    "create_engine",
    "database_url",
    "display_url",
    "error_reason",
    "feedback",
    "inspection_counts",
    "inspections",
    "location_counts",
    "metadata",
    "new_id",
    "part_counts",
    "region_counts",
    "region_embeddings",
    "regions",
    "store_meta",
    "unreachable",
]

# Each change of the schema is a migration in inspector/migrations/versions (Alembic), which sets this version.
SCHEMA_VERSION: Final = 5            # 2: inspections.result_id (unique); 3: predicted defect types, embeddings;
                                     # 4: roll-up tables (inspection_counts, region_counts, location_counts);
                                     # 5: part_counts (defective parts per type: the Pareto's unit)
# Time grouping is done on 15-minute buckets in SQL, then mapped to local hours/days/shifts in Python:
# every time zone in use today is a whole number of quarter hours from UTC, so a bucket never
# straddles a local hour, and shifts may start on any quarter hour.
BUCKET_S: Final = 900
# ours: the location roll-up counts region centres on cells of this many frame pixels (issue 16: 8 px keeps the
# worst case, defects spread evenly over a 600 x 400 frame, at 3,750 cells per type and recipe)
LOCATION_CELL_PX: Final = 8
STORE_URL_ENV: Final = "INSPECTOR_STORE_URL"            # a plant's shared store, e.g. postgresql://...
STORE_URL_FILE_ENV: Final = "INSPECTOR_STORE_URL_FILE"  # ... or a file (mode 0600) holding that URL
_MAX_URL_FILE_BYTES: Final = 4096

# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

metadata = sa.MetaData()

inspections = sa.Table(
    "inspections", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),          # capture time, seconds since the epoch
    sa.Column("recipe", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False, default=""),
    sa.Column("line", sa.Text, nullable=False, default=""),
    sa.Column("station", sa.Text, nullable=False, default=""),
    sa.Column("lot", sa.Text, nullable=False, default=""),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text),                          # source file (file/replay sources)
    sa.Column("verdict", sa.String(8), nullable=False),  # Verdict value: PASS, REVIEW, FAIL, ERROR
    sa.Column("score", sa.Float),                        # None for ERROR
    sa.Column("latency_ms", sa.Float),                   # capture + preprocess + model + postprocess
    sa.Column("image_path", sa.Text),                    # archived frame, if any
    sa.Column("overlay_path", sa.Text),                  # archived heatmap overlay, if any
    sa.Column("error", sa.Text),                         # one sentence for ERROR
    sa.Column("result_id", sa.String(64)),               # unique per result: a journal replay stores it once
    sa.Index("ix_inspections_time", "time"),
    sa.Index("ux_inspections_result_id", "result_id", unique=True),
    sa.Index("ix_inspections_recipe_time", "recipe", "time"),
    sa.Index("ix_inspections_verdict", "verdict"),
)

regions = sa.Table(
    "regions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("x", sa.Integer, nullable=False),
    sa.Column("y", sa.Integer, nullable=False),
    sa.Column("w", sa.Integer, nullable=False),
    sa.Column("h", sa.Integer, nullable=False),
    sa.Column("area_px", sa.Integer, nullable=False),
    sa.Column("area_mm2", sa.Float),
    sa.Column("max_score", sa.Float),
    sa.Column("mean_score", sa.Float),
    sa.Column("defect_class", sa.Text),                  # None until a reviewer classifies it
    sa.Column("classified_by", sa.Text),
    sa.Column("classified_at", sa.Float),
    # added later (upgraded in place): the few-shot typer's guess at inspection time, kept apart
    # from a reviewer's defect_class
    sa.Column("predicted_class", sa.Text),                # a labelled class, "unknown", or None (no typer)
    sa.Column("predicted_confidence", sa.Float),          # [0, 1]
    sa.Index("ix_regions_inspection", "inspection_id"),
    sa.Index("ix_regions_classified_at", "classified_at"),   # the defect typer's "labels since" query
)

# added later: each region's DINOv2 embedding ((D,) float32 bytes), so that labelling it teaches the typer
region_embeddings = sa.Table(
    "region_embeddings", metadata,
    sa.Column("region_id", sa.Integer, sa.ForeignKey("regions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("inspection_id", sa.Integer, sa.ForeignKey("inspections.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("label", sa.Text, nullable=False),         # "good" or a defect class of the recipe
    sa.Column("user", sa.Text, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Index("ix_feedback_inspection", "inspection_id"),
)

# Roll-ups (schema 4), kept by `inspector.store.rollup` in the transaction that changes the detail rows, so that
# whole-store statistics read thousands of rows, not millions. A class column holds '' for NULL (no class): NULLs
# never collide in a primary key, so an upsert could not find their row.


def _rollup_keys(*names: str) -> list[sa.Column[Any]]:
    return [sa.Column(name, sa.Text, primary_key=True) for name in names]


inspection_counts = sa.Table(
    "inspection_counts", metadata,
    *_rollup_keys("recipe", "line", "station", "lot"),
    sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),   # floor(time / BUCKET_S)
    sa.Column("verdict", sa.String(8), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("first_time", sa.Float, nullable=False),    # the group's earliest inspection (orders lots)
    # time windows: of one recipe, of all (the key starts with recipe, line, station, lot)
    sa.Index("ix_inspection_counts_recipe_bucket", "recipe", "bucket"),
    sa.Index("ix_inspection_counts_bucket", "bucket"),
)

region_counts = sa.Table(
    "region_counts", metadata,
    *_rollup_keys("recipe", "line", "station", "lot"),
    sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
    *_rollup_keys("defect_class", "predicted_class"),     # '' = none
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Index("ix_region_counts_recipe_bucket", "recipe", "bucket"),
    sa.Index("ix_region_counts_bucket", "bucket"),
)

# (schema 5) inspections with at least one region of a type, per recipe, line, station, lot, bucket and type
# source: a part with nine fragments of one scratch is one scratched part. One row set per source ('best': the
# reviewer's class, else the typer's; 'confirmed'; 'predicted'), because a part counted once per type cannot be
# summed from counts per (confirmed, predicted) pair: its regions may reach one type through different pairs.
part_counts = sa.Table(
    "part_counts", metadata,
    *_rollup_keys("recipe", "line", "station", "lot"),
    sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
    *_rollup_keys("source", "defect_type"),
    sa.Column("n", sa.BigInteger, nullable=False),          # parts
    sa.Column("regions", sa.BigInteger, nullable=False),    # their regions of the type (the Pareto's second figure)
    sa.Index("ix_part_counts_recipe_bucket", "recipe", "bucket"),
    sa.Index("ix_part_counts_bucket", "bucket"),
)

location_counts = sa.Table(
    "location_counts", metadata,
    *_rollup_keys("recipe", "line", "station", "defect_class", "predicted_class"),
    # the region's centre, (2 x + w) // (2 LOCATION_CELL_PX) and likewise for y (truncated, as SQL divides)
    sa.Column("cell_x", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("cell_y", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)

store_meta = sa.Table(
    "store_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class bucket(FunctionElement[int]):
    """``floor(x)`` for x >= 0, portably: SQLite's ``floor`` needs its optional math extension."""

    type = sa.Integer()
    inherit_cache = True
    name = "bucket"


@compiles(bucket)
def _bucket_default(element: bucket, compiler: Any, **kw: Any) -> str:
    return f"FLOOR({compiler.process(element.clauses, **kw)})"


@compiles(bucket, "sqlite")
def _bucket_sqlite(element: bucket, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"   # truncation == floor for x >= 0


# --------------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------------


def configured_url() -> str | None:
    """The store URL a plant configured for this computer, or None for the per-user SQLite file.

    ``$INSPECTOR_STORE_URL`` first, else the first line of the file named by ``$INSPECTOR_STORE_URL_FILE``,
    which must be a regular file readable by its owner only (``chmod 600``): a URL holds the database
    password, and neither is ever printed (see `display_url`).

    Raises:
        StoreError: the URL file is missing, empty, not a regular file or readable by others.
    """
    value = os.environ.get(STORE_URL_ENV, "").strip()
    if value:
        return value
    file_name = os.environ.get(STORE_URL_FILE_ENV, "").strip()
    if not file_name:
        return None
    path = Path(file_name).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        msg = f"{STORE_URL_FILE_ENV}={path}: cannot read the store URL file ({exc.strerror or exc})"
        raise StoreError(msg) from exc
    if not stat.S_ISREG(info.st_mode):
        msg = f"{STORE_URL_FILE_ENV}={path}: not a regular file"
        raise StoreError(msg)
    if info.st_mode & 0o077:
        msg = (f"{STORE_URL_FILE_ENV}={path}: readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
               f"it holds the database password: run chmod 600 {path}")
        raise StoreError(msg)
    if info.st_size > _MAX_URL_FILE_BYTES:
        msg = f"{STORE_URL_FILE_ENV}={path}: {info.st_size} bytes is not a store URL (at most {_MAX_URL_FILE_BYTES})"
        raise StoreError(msg)
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if not lines or not lines[0].strip():
        msg = f"{STORE_URL_FILE_ENV}={path}: empty; write the store URL on its first line"
        raise StoreError(msg)
    return lines[0].strip()


def database_url(url: str | Path | None) -> sa.URL:
    """The SQLAlchemy URL of a store: None = the configured one (`configured_url`), else the per-user
    SQLite file; a path or a name without ``://`` = an SQLite file; anything else = a SQLAlchemy URL.

    Raises:
        StoreError: an in-memory database, a missing folder or a malformed URL.
    """
    if url is None:
        url = configured_url()
    if url is None:
        path = paths.database_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return sa.URL.create("sqlite", database=str(path))
    text = str(url)
    if isinstance(url, Path) or "://" not in text:
        if text in ("", ":memory:"):
            msg = (f"statistics store {text!r}: an in-memory database cannot be shared with the writer "
                   "thread; give a file path (tests: a file in tmp_path)")
            raise StoreError(msg)
        path = Path(text).expanduser()
        if not path.parent.is_dir():
            msg = (f"statistics store {path}: folder {path.parent} does not exist; "
                   "create it or choose another path")
            raise StoreError(msg)
        return sa.URL.create("sqlite", database=str(path))
    try:
        parsed = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        msg = f"statistics store URL {text!r} is not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)"
        raise StoreError(msg) from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        msg = ("statistics store: an in-memory SQLite database cannot be shared with the writer thread; "
               "give a file")
        raise StoreError(msg)
    return parsed


def display_url(url: sa.URL) -> str:
    """The store's name in messages: the SQLite file, or the URL with its password hidden."""
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def create_engine(url: sa.URL, busy_timeout_s: float) -> sa.Engine:
    """An engine for the store; SQLite connections get a busy timeout, WAL, FULL sync and foreign keys.

    Raises:
        StoreError: no driver installed for the URL's database, or the URL is malformed.
    """
    try:
        if url.get_backend_name() != "sqlite":
            return sa.create_engine(url, pool_pre_ping=True)
        # Connections move between the writer thread and readers; the pool hands each to one thread at a time.
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        msg = (f"cannot open the statistics store {display_url(url)}: {exc}; "
               "install its database driver or check the URL")
        raise StoreError(msg) from exc

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")   # our own int: not user input
            _journal_wal(cur, busy_timeout_s)           # readers never block the writer, nor other processes
            # FULL: a commit is on disk before recorded_count moves, even across a power cut.
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    return engine


def _journal_wal(cur: sqlite3.Cursor, busy_timeout_s: float) -> None:
    """Switch the connection's database to WAL, retrying while another process holds the lock.

    Changing the journal mode needs the database to itself for a moment, and SQLite answers "database is
    locked" at once, without its busy handler, when another station is creating or upgrading a new store at
    the same instant; so the switch is retried until the busy timeout has passed.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


def check_schema(engine: sa.Engine, display_name: str) -> None:
    """Create or upgrade the schema in place (`inspector.migrations`) and check the version.

    Raises:
        StoreError: the database cannot be reached or opened, or was made by a newer inspector.
    """
    from inspector import migrations

    migrations.upgrade(engine, display_name)
    version = sa.select(store_meta.c.value).where(store_meta.c.key == "schema_version")
    try:
        with engine.connect() as conn:
            found = conn.execute(version).scalar()
    except sa.exc.SQLAlchemyError as exc:
        msg = f"cannot open the statistics store {display_name}: {error_reason(exc)}"
        raise StoreError(msg) from exc
    if found is None or not found.isdigit() or int(found) > SCHEMA_VERSION:
        msg = (f"the statistics store {display_name} has schema version {found}, newer than this "
               f"inspector reads ({SCHEMA_VERSION}); upgrade inspector or use another database")
        raise StoreError(msg)


class WriteTransaction:
    """One immediate write (feedback, classes, forgotten images) with the database's errors turned into
    StoreError that names the store and what was written."""

    def __init__(self, engine: sa.Engine, display_name: str, what: str) -> None:
        self._engine = engine
        self._display_name = display_name
        self._what = what
        self._ctx: Any = None

    def __enter__(self) -> sa.Connection:
        self._ctx = self._engine.begin()
        try:
            return self._ctx.__enter__()   # type: ignore[no-any-return]
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(self._message(exc)) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._ctx.__exit__(exc_type, exc, tb)
        except sa.exc.SQLAlchemyError as db_exc:
            raise StoreError(self._message(db_exc)) from db_exc
        if isinstance(exc, sa.exc.SQLAlchemyError):
            raise StoreError(self._message(exc)) from exc

    def _message(self, exc: BaseException) -> str:
        return f"cannot write {self._what} to {self._display_name}: {error_reason(exc)}"


def unreachable(exc: BaseException) -> bool:
    """Whether a store error means the server could not be reached (not: refused us, or our data)."""
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, sa.exc.SQLAlchemyError):
        cause = cause.__cause__
    return isinstance(cause, sa.exc.OperationalError | sa.exc.InterfaceError)


def error_reason(exc: BaseException) -> str:
    """The database's own sentence, without SQLAlchemy's SQL dump and link."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def new_id(result: sa.CursorResult[Any]) -> Any:
    """The primary key of a one-row insert (SQLAlchemy types it Optional: None only after executemany)."""
    return cast("sa.Row[Any]", result.inserted_primary_key)[0]
