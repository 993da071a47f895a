"""Line IO test helpers: free loopback ports, a PLC's Modbus client, and a real mosquitto broker that a test can
stop and start."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pymodbus.client import ModbusTcpClient


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0, *, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts connections on ``port``; TimeoutError after ``timeout`` s, or as soon as
    ``process`` (the server meant to listen) has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            msg = f"the server meant to listen on 127.0.0.1:{port} exited with code {process.returncode}"
            raise TimeoutError(msg)
        time.sleep(0.02)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout} s"
    raise TimeoutError(msg)


class Plc:
    """The PLC's side of a station's Modbus link: a pymodbus client on 127.0.0.1 reading holding registers 0-8."""

    TRIG, RESULT = 2, 3   # the trigger count the PLC writes, the count the station answers

    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port)
        if not self.client.connect():
            msg = f"the PLC cannot connect to the station's Modbus server on 127.0.0.1:{port}"
            raise AssertionError(msg)

    def regs(self) -> list[int]:
        """Holding registers 0-8 as the station shows them now."""
        reply = self.client.read_holding_registers(0, count=9)
        assert not reply.isError(), reply
        return list(reply.registers)

    def write(self, register: int, value: int) -> None:
        reply = self.client.write_register(register, value)
        assert not reply.isError(), reply

    def answer(self, count: int, wait_until: Callable[..., object], timeout_ms: int = 60_000) -> list[int]:
        """Trigger ``count`` and wait (``wait_until(condition, timeout=ms)``, e.g. qtbot's) for its answer."""
        self.write(self.TRIG, count)
        wait_until(lambda: self.regs()[self.RESULT] == count, timeout=timeout_ms)
        return self.regs()

    def close(self) -> None:
        self.client.close()


class Broker:
    """A mosquitto process on 127.0.0.1 with a persistent store, which a test may stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        self._write_config()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    def _write_config(self) -> None:
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Started as root, mosquitto drops to the user "mosquitto", who cannot write into pytest's
            # private tmp folder (no log, no persistent sessions): stay the user who started it.
            f"user {getpass.getuser()}\n"
            "persistence true\n"           # QoS 1 sessions of subscribers survive a restart
            f"persistence_location {self.folder}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.folder}/mosquitto.log\n"
        )

    def start(self) -> None:
        """Start mosquitto and wait until it listens (generous: a loaded CI machine starts it slowly).

        On the first start only, a broker that exits at once (another program took the free port in the
        meantime) is started again on a new port; a restart keeps its port, which clients reconnect to.
        """
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        for attempt in range(1 if self._started else 3):
            self._proc = subprocess.Popen([mosquitto, "-c", str(self.config)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(self.port, timeout=30.0, process=self._proc)
            except TimeoutError as exc:
                exited = self._proc.poll() is not None
                self.stop()                      # never leave the process behind for a later test
                if exited and not self._started and attempt < 2:
                    self.port = free_port()
                    self._write_config()
                    continue
                log = self.folder / "mosquitto.log"
                tail = log.read_text(errors="replace")[-500:] if log.is_file() else "(no log)"
                msg = f"{exc}; mosquitto's log ends: {tail}"
                raise TimeoutError(msg) from exc
            self._started = True
            return

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None


