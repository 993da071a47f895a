"""MQTT publisher (paho-mqtt): one JSON message per result, QoS 1, through a bounded on-disk spool.

- `MqttPublisher.publish` only writes the message into the spool (a folder of numbered files) and
  returns: a broker outage neither blocks nor slows inspection.
- A sender thread hands spooled messages to paho in order while the broker is connected, at most
  ``window`` unacknowledged at a time, and deletes a file when the broker acknowledged it (PUBACK).
  A message in flight when the connection drops is sent again by paho after it reconnects (QoS 1:
  the broker may then see it twice); nothing is sent out of order.
- The spool survives a restart of the station: what was not acknowledged is sent at the next start.
  It holds at most ``spool_max_messages``; beyond that the oldest message is dropped and counted
  (a warning on the link's state), so a week-long outage cannot fill the disk.
- A retained status topic reads "online" while connected; the broker publishes the last will
  "offline" (retained) if the station disappears, and the station publishes it on a clean stop.

Each message carries ``seq``, the station's message number, so that a subscriber can drop QoS 1
duplicates. It only ever grows, across restarts of the station too (a spool that was emptied before a
restart does not start again at 1): the spool keeps the next free number in a small file, reserved
`SEQ_BLOCK` at a time, so that number is written once per block, not once per message. After a
restart the numbers may jump (up to one block); they never repeat.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from inspector import paths
from inspector.lineio.signals import LinkMonitor
from inspector.lineio.station_config import MqttConfig
from inspector.results import InspectionResult
from models.files import atomic_write

__all__ = ["MessageSpool", "MqttPublisher", "result_message"]

logger = logging.getLogger(__name__)

LINK: Final = "mqtt"
WINDOW: Final = 20                 # unacknowledged messages at a time (paho's default in-flight limit)
_EARLY_ACK_S: Final = 10.0         # how long an acknowledgement that came before its bookkeeping is kept
SEQ_BLOCK: Final = 1000            # message numbers reserved at once in the spool's SEQ_FILE
SEQ_FILE: Final = "next-seq"


def result_message(result: InspectionResult, *, station: str, seq: int,
                   image_path: str | None = None) -> dict[str, Any]:
    """The JSON document published for one result."""
    return {
        "seq": seq,
        "station": station,
        "line": result.line,
        "recipe": result.recipe,
        "model_version": result.model_version,
        "lot": result.lot,
        "frame_id": result.frame_id,
        "time": dt.datetime.fromtimestamp(result.timestamp, tz=dt.UTC).isoformat(timespec="milliseconds"),
        "verdict": result.verdict.value,
        "score": result.score,
        "error": result.error,
        "regions": [
            {"x": r.x, "y": r.y, "width": r.width, "height": r.height, "area_px": r.area_px,
             "area_mm2": r.area_mm2, "max_score": r.max_score, "mean_score": r.mean_score}
            for r in result.regions
        ],
        "image": image_path,
    }


class MessageSpool:
    """A bounded folder of numbered message files, oldest first; thread-safe.

    Args:
        folder: where the files live (made if missing); files already there are loaded, in order.
        max_messages: the most kept; adding one more drops the oldest.
    """

    def __init__(self, folder: Path, *, max_messages: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._max = max_messages
        self._lock = threading.Lock()
        files = sorted(p for p in folder.glob("*.json") if p.stem.isdigit())
        # seq -> payload while this process holds it in memory (None: on disk only, from an earlier run)
        self._held: collections.OrderedDict[int, bytes | None] = collections.OrderedDict(
            (int(p.stem), None) for p in files)
        self._unsent: collections.deque[int] = collections.deque(self._held)
        # Never a number already used: at least one past the newest file and past every number reserved.
        self._next = max((max(self._held) + 1) if self._held else 1, self._read_reserved())
        self._reserved = self._next               # numbers below this may be used without writing SEQ_FILE
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def _file(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.json"

    def _read_reserved(self) -> int:
        """The next free number as SEQ_FILE keeps it (1 when there is none yet)."""
        file = self.folder / SEQ_FILE
        try:
            text = file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 1
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"{file}: cannot be read ({exc}); the MQTT message numbers (seq) would start again"
            raise OSError(msg) from exc
        if not text.isdigit():
            msg = (f"{file}: holds {text[:40]!r}, not the next message number; put back a number above every "
                   f"seq subscribers have seen (or delete the file to start at 1)")
            raise ValueError(msg)
        return int(text)

    def append(self, make: Callable[[int], bytes]) -> int:
        """Write ``make(seq)`` as the next message; returns its number."""
        with self._lock:
            seq, self._next = self._next, self._next + 1
            if seq >= self._reserved:          # reserve the next block before using a number of it
                self._reserved = seq + SEQ_BLOCK
                atomic_write(self.folder / SEQ_FILE, f"{self._reserved}\n")
            payload = make(seq)
            # Written in place (no temporary file and rename: that halved the rate); a file cut short
            # by a crash is not valid JSON and is dropped when the spool is loaded again.
            self._file(seq).write_bytes(payload)
            self._held[seq] = payload
            self._unsent.append(seq)
            while len(self._held) > self._max:
                oldest, _ = self._held.popitem(last=False)
                if self._unsent and self._unsent[0] == oldest:
                    self._unsent.popleft()
                self._file(oldest).unlink(missing_ok=True)
                self.dropped += 1
            return seq

    def take_unsent(self) -> tuple[int, bytes] | None:
        """The oldest message not yet handed out, marked as handed out; None if there is none."""
        with self._lock:
            while self._unsent:
                seq = self._unsent.popleft()
                if seq not in self._held:
                    continue
                payload = self._held[seq]
                if payload is not None:
                    return seq, payload
                try:
                    payload = self._file(seq).read_bytes()
                    json.loads(payload)
                except (FileNotFoundError, ValueError):   # removed by hand, or cut short by a crash
                    self._held.pop(seq, None)
                    self._file(seq).unlink(missing_ok=True)
                    continue
                return seq, payload
            return None

    def has_unsent(self) -> bool:
        with self._lock:
            return bool(self._unsent)

    def remove(self, seq: int) -> None:
        """The message was delivered: forget it."""
        with self._lock:
            if seq in self._held:
                del self._held[seq]
                self._file(seq).unlink(missing_ok=True)


class MqttPublisher:
    """Publishes results to an MQTT broker without ever blocking the caller.

    Args:
        config: broker, topics and spool bounds (station.yaml ``mqtt``).
        station: the station name (in topics and messages).
        monitor: where the link's state is reported.
        window: unacknowledged messages at a time.
    """

    def __init__(self, config: MqttConfig, *, station: str, monitor: LinkMonitor, window: int = WINDOW) -> None:
        import paho.mqtt.client as paho

        self._config = config
        self._station = station
        self._monitor = monitor
        self._window = window
        self.topic = config.topic.replace("{station}", station)
        self.status_topic = config.status_topic.replace("{station}", station)
        folder = config.spool_dir or paths.data_dir() / "mqtt-spool" / paths.safe_name(station)
        self.spool = MessageSpool(folder, max_messages=config.spool_max_messages)
        self._cond = threading.Condition()
        self._connected = False
        self._inflight: dict[int, int] = {}          # paho message id -> spool seq
        self._early: dict[int, float] = {}           # acks seen before their mid was booked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        client_id = config.client_id or f"inspector-{paths.safe_name(station)}"
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=paho.MQTTv311, clean_session=True)
        self._client.max_inflight_messages_set(window)
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if config.username:
            password = os.environ.get(config.password_env) if config.password_env else None
            self._client.username_pw_set(config.username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._outage_reported = False                # one error per outage, not one per retry
        self._client.on_publish = self._on_publish
        monitor.register(LINK, f"{config.host}:{config.port}")
        self._update_detail()

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (a broker that is down is retried every 1-2 s) and start sending."""
        self._client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._send_loop, name="inspector-mqtt", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Wait up to ``flush_timeout`` s for the spool to drain, say "offline", disconnect; idempotent.

        What is not delivered stays in the spool for the next start.
        """
        end = time.monotonic() + flush_timeout
        while time.monotonic() < end and self._connected and len(self.spool):
            time.sleep(0.02)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._connected:
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        self._monitor.update(LINK, up=False)

    def publish(self, result: InspectionResult, *, image_path: str | None = None) -> int:
        """Spool one result's message (never blocks on the network); returns its ``seq``."""
        def make(seq: int) -> bytes:
            doc = result_message(result, station=self._station, seq=seq, image_path=image_path)
            return json.dumps(doc, separators=(",", ":")).encode("utf-8")

        dropped = self.spool.dropped
        seq = self.spool.append(make)
        if self.spool.dropped != dropped:
            self._monitor.update(LINK, error=f"spool full ({self._config.spool_max_messages} messages): "
                                             f"{self.spool.dropped} oldest dropped")
        with self._cond:
            self._cond.notify_all()
        self._update_detail()
        return seq

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- sender thread ----------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not (self._connected and len(self._inflight) < self._window and self.spool.has_unsent()):
                    self._cond.wait(0.2)
                    continue
            item = self.spool.take_unsent()
            if item is None:
                continue
            seq, payload = item
            # Once handed to paho a QoS 1 message is paho's to deliver: it resends it after a reconnect.
            info = self._client.publish(self.topic, payload, qos=1)
            with self._cond:
                if self._early.pop(info.mid, None) is not None:
                    self._delivered(seq)
                else:
                    self._inflight[info.mid] = seq

    def _delivered(self, seq: int) -> None:
        self.spool.remove(seq)
        self.delivered += 1
        self._monitor.update(LINK, message=True)
        self._update_detail()

    def _update_detail(self) -> None:
        self._monitor.update(LINK, detail=f"{len(self.spool)} spooled, {self.spool.dropped} dropped")

    # ---- paho callbacks (paho's network thread) ------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._monitor.update(LINK, error=f"broker refused the connection: {reason_code}")
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        with self._cond:
            self._connected = True
            self._outage_reported = False
            self._cond.notify_all()
        self._monitor.update(LINK, up=True)
        logger.info("MQTT connected to %s:%d", self._config.host, self._config.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connected = False
            self._outage_reported = True
        if not self._stop.is_set():
            self._monitor.update(LINK, up=False, error=f"broker connection lost ({reason_code}); retrying")
            logger.warning("MQTT connection to %s:%d lost: %s", self._config.host, self._config.port, reason_code)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        """The broker could not be reached (refused, no route): said once per outage, retried every 1-2 s."""
        with self._cond:
            report, self._outage_reported = not self._outage_reported, True
        if report and not self._stop.is_set():
            where = f"{self._config.host}:{self._config.port}"
            self._monitor.update(LINK, up=False, error=f"cannot reach the broker at {where}; retrying, results spooled")
            logger.warning("MQTT broker at %s cannot be reached; retrying", where)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            seq = self._inflight.pop(mid, None)
            if seq is None:                  # the status message, or an ack that beat the bookkeeping
                now = time.monotonic()
                self._early = {m: t for m, t in self._early.items() if now - t < _EARLY_ACK_S}
                self._early[mid] = now
            else:
                self._delivered(seq)
            self._cond.notify_all()
