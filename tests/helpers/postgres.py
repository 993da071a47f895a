"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary folder, a free
loopback port, a unix socket beside the data, removed after.

Debian's ``postgresql`` package provides the server (``.ci/run`` installs it when missing). PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` system user that the package
creates, through ``runuser``.

Example:
    >>> with PostgresCluster.start(tmp_path) as pg:                     # doctest: +SKIP
    ...     store = Store(pg.url("stats"))
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PostgresCluster", "postgres_bin_dir"]


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (newest Debian version first), or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parents[1].name) if Path(p).parents[1].name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class PostgresCluster:
    """A running throwaway cluster; `stop` (or leaving the ``with``) stops it and removes its folder."""

    root: Path
    port: int
    bin_dir: Path
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()          # more server arguments, e.g. ("-c", "ssl=on")

    @classmethod
    def start(cls, root: Path | None = None, *, port: int | None = None,
              extra: tuple[str, ...] = ()) -> PostgresCluster:
        """initdb (trust auth, loopback only) and start the server; waits until it accepts connections.

        Args:
            root: an empty folder for the cluster; default a new one under the system's temp folder
                (not pytest's: its folders are private to their user, and the server runs as ``postgres``).

        Raises:
            RuntimeError: PostgreSQL is not installed, or the server did not come up (its log is quoted).
        """
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            msg = "PostgreSQL is not installed (apt-get install postgresql)"
            raise RuntimeError(msg)
        root = root if root is not None else Path(tempfile.mkdtemp(prefix="inspector-pg-"))
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        data = root / "data"
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                             "--encoding=UTF8", "--no-sync"]),
            check=True, capture_output=True)
        cluster = cls(root=root, port=port or _free_port(), bin_dir=bin_dir, extra=extra)
        cluster.resume()
        return cluster

    def resume(self) -> None:
        """Start (or restart) the server on the same port and data; waits until it accepts connections."""
        data = self.root / "data"
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(
            _as_server_user([str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                             "-c", "fsync=off", "-c", "max_connections=60", *self.extra]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"PostgreSQL did not start:\n{(self.root / 'server.log').read_text(errors='replace')}"
                raise RuntimeError(msg)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                if self._ready():
                    return
            time.sleep(0.1)
        self.stop(remove=False)
        msg = f"PostgreSQL did not accept connections within 30 s; log in {self.root / 'server.log'}"
        raise RuntimeError(msg)

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')   # test-chosen name, not user input
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def pause(self) -> None:
        """Stop the server (fast shutdown) but keep its data: `resume` starts it again."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)     # fast shutdown: disconnects clients
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self, *, remove: bool = True) -> None:
        self.pause()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
