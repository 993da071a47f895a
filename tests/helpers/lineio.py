"""Line IO test helpers: free loopback ports and a real mosquitto broker that a test can stop and start."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    msg = f"nothing listens on 127.0.0.1:{port} after {timeout} s"
    raise TimeoutError(msg)


class Broker:
    """A mosquitto process on 127.0.0.1 with a persistent store, which a test may stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Started as root, mosquitto drops to the user "mosquitto", who cannot write into pytest's
            # private tmp folder (no log, no persistent sessions): stay the user who started it.
            f"user {getpass.getuser()}\n"
            "persistence true\n"           # QoS 1 sessions of subscribers survive a restart
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            f"log_dest file {folder}/mosquitto.log\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._proc = subprocess.Popen([mosquitto, "-c", str(self.config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


