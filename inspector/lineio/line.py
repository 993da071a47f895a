"""`LineIO`: a station's links to the line (Modbus, OPC UA, MQTT) built from its station.yaml, as one object.

It owns the handshake state (`LineSignals`), the heartbeat, each configured link and the links'
states (`LinkMonitor`). A link that cannot start (a port in use) is reported on the monitor and
raises from `start`; a link that drops later never stops inspection or recording.

Results reach it after the recorder: ``inspector run`` and the app call `publish` from a consumer
added after `ResultRecorder.record` (continuous mode), or hand it to `TriggeredRunner` as its
``after_answer`` (triggered mode), so nothing is reported to the line before it was recorded.

Example:
    >>> line = LineIO(load_station_config("station.yaml"), active_recipe=1)   # doctest: +SKIP
    >>> line.start()
    >>> line.monitor.snapshot()          # (LinkState(name='modbus', up=True, ...), ...)
    >>> line.stop()
"""

from __future__ import annotations

import logging
import threading
from typing import Final, Protocol

from inspector.lineio.signals import LineSignals, LinkMonitor
from inspector.lineio.station_config import StationConfig
from inspector.pipeline import EventKind, PipelineEvent
from inspector.results import InspectionResult, Verdict

__all__ = ["HEARTBEAT_S", "LineIO"]

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 1.0


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class LineIO:
    """The station's links to the line.

    Args:
        config: the validated station.yaml.
        active_recipe: the PLC recipe number in use at start (0: none).
        monitor: a shared `LinkMonitor`, or None for a new one.
    """

    def __init__(self, config: StationConfig, *, active_recipe: int = 0, monitor: LinkMonitor | None = None) -> None:
        self.config = config
        self.monitor = monitor or LinkMonitor()
        self.signals = LineSignals(recipe_numbers=config.recipe_numbers, active_recipe=active_recipe)
        self._triggered = config.mode == "triggered"     # continuous mode refuses PLC triggers
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._links: list[_Server] = []
        self.mqtt = None
        if config.mqtt is not None:
            from inspector.lineio.mqtt import MqttPublisher

            self.mqtt = MqttPublisher(config.mqtt, station=config.station, monitor=self.monitor)

    def start(self) -> None:
        """Start the heartbeat and every configured link.

        Raises:
            InspectorError: a server could not listen (the message names the port and the station.yaml field).
        """
        self._heartbeat = threading.Thread(target=self._beat, name="inspector-heartbeat", daemon=True)
        self._heartbeat.start()
        try:
            if self.config.modbus is not None:
                from inspector.lineio.modbus import ModbusLink

                self._start(ModbusLink(self.config.modbus, self.signals, self.monitor, triggers=self._triggered))
            if self.config.opcua is not None:
                from inspector.lineio.opcua import OpcUaLink

                self._start(OpcUaLink(self.config.opcua, self.signals, self.monitor, station=self.config.station,
                                      triggers=self._triggered))
        except Exception:
            self.stop()
            raise
        if self.mqtt is not None:
            self.mqtt.start()

    def _start(self, link: _Server) -> None:
        link.start()
        self._links.append(link)

    def publish(self, result: InspectionResult) -> None:
        """Result consumer, after the recorder: one MQTT message (spooled; never blocks)."""
        if self.mqtt is not None:
            self.mqtt.publish(result)

    def follow_pipeline(self, event: PipelineEvent) -> None:
        """Continuous mode: FAULT follows the pipeline's source (lost, failed or ended: set; back: cleared)."""
        if event.kind in (EventKind.SOURCE_LOST, EventKind.SOURCE_FAILED, EventKind.SOURCE_ENDED):
            self.signals.set_fault("camera", f"{event.kind.value}: {event.message}")
        elif event.kind in (EventKind.SOURCE_OPENED, EventKind.SOURCE_RECONNECTED):
            self.signals.set_fault("camera", None)

    def follow_result(self, result: InspectionResult) -> None:
        """Continuous mode: FAULT while the last result is ERROR (the model raised, the frame could not be
        read, the result could not be recorded); the next good result clears it."""
        error = result.verdict is Verdict.ERROR
        self.signals.set_fault("inspection", (result.error or "ERROR result") if error else None)

    def stop(self) -> None:
        """Stop every link and the heartbeat; idempotent."""
        self._stop.set()
        for link in reversed(self._links):
            try:
                link.stop()
            except Exception:
                logger.exception("stopping %r failed", link)
        self._links.clear()
        if self.mqtt is not None:
            self.mqtt.stop()
            self.mqtt = None
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2 * HEARTBEAT_S)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.signals.beat()
