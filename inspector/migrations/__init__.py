"""Versioned schema migrations of the statistics store (Alembic).

`upgrade(engine, display_name)` brings a store to the newest schema this program knows, in place,
and refuses one made by a newer program. It is what `inspector.store.Store` runs on opening:

- a new database gets every table (revision ``0001`` creates the first schema, then each later
  revision changes it);
- a store made before migrations existed (tables and ``store_meta.schema_version = 1``, no
  ``alembic_version`` table) is adopted: ``0001`` finds its tables and only records the revision;
- a store whose revision this program does not know was made by a newer inspector: refused with a
  clear message, nothing changed.

Two processes opening a new store at once are serialised: PostgreSQL by a transaction-scoped
advisory lock, SQLite by ``BEGIN IMMEDIATE`` (the database's write lock), each around the whole
upgrade, which runs in one transaction (both databases have transactional DDL): a killed upgrade
leaves the store as it was.

To change the schema: add ``versions/NNNN_what.py`` with ``down_revision`` set to the newest one,
change the tables in `inspector.store` to match, and bump `inspector.store.SCHEMA_VERSION`
(`tests/inspector/test_migrations.py` checks that the migrated schema equals the tables in code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import sqlalchemy as sa
from sqlalchemy import event

from inspector.errors import StoreError

__all__ = ["HEAD", "current_revision", "upgrade"]

HERE: Final = Path(__file__).resolve().parent
HEAD: Final = "0005"                      # the newest revision in versions/ (a test checks it)
_PG_LOCK_KEY: Final = 0x1A5B_EC70         # advisory lock id for "inspector schema upgrade"


def _config(connection: sa.Connection) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: sa.Engine) -> str | None:
    """The store's Alembic revision, or None for a new store or one made before migrations."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: sa.Engine, display_name: str) -> None:
    """Bring the store to `HEAD` in one transaction, serialised against other processes.

    Raises:
        StoreError: the store was made by a newer inspector (unknown revision), or the upgrade failed.
    """
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        found = current_revision(engine)
    except sa.exc.SQLAlchemyError as exc:
        msg = f"cannot open the statistics store {display_name}: {_reason(exc)}"
        raise StoreError(msg) from exc
    if found == HEAD:
        return                                      # the common case: nothing to do, no lock taken
    known = {s.revision for s in ScriptDirectory(str(HERE)).walk_revisions()}
    if found is not None and found not in known:
        msg = (f"the statistics store {display_name} has schema revision {found}, made by a newer inspector "
               f"than this one (newest known: {HEAD}); upgrade inspector or use another database")
        raise StoreError(msg)
    work = _migration_engine(engine)
    try:
        with work.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            command.upgrade(_config(conn), "head")  # type: ignore[arg-type]
    except CommandError as exc:
        msg = f"cannot upgrade the statistics store {display_name}: {exc}"
        raise StoreError(msg) from exc
    except sa.exc.SQLAlchemyError as exc:
        msg = f"cannot upgrade the statistics store {display_name}: {_reason(exc)}"
        raise StoreError(msg) from exc
    finally:
        if work is not engine:
            work.dispose()


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own sentence, without SQLAlchemy's statement dump and link."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def _migration_engine(engine: sa.Engine) -> sa.Engine:
    """For SQLite, an engine whose transactions start with ``BEGIN IMMEDIATE``.

    Python's sqlite3 module runs DDL outside any transaction by default; this engine hands transaction
    control to SQLAlchemy (the recipe of SQLAlchemy's SQLite dialect documentation), so the whole
    upgrade is one transaction holding the write lock from its first statement.
    """
    if engine.dialect.name != "sqlite":
        return engine
    work = sa.create_engine(engine.url, connect_args={"check_same_thread": False, "timeout": 30.0},
                            poolclass=sa.pool.NullPool)

    @event.listens_for(work, "connect")
    def _connect(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.isolation_level = None           # type: ignore[attr-defined]
        cur = dbapi_conn.cursor()                   # type: ignore[attr-defined]
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.close()

    @event.listens_for(work, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return work
