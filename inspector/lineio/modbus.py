"""Modbus TCP server (pymodbus): the PLC is the client and polls the station's holding registers.

The register map (addresses from station.yaml, defaults HR0..HR8) is served from `LineSignals`: every
read is filled from a fresh snapshot, and the only registers a client may write are the trigger
counter and the requested recipe. Anything else is refused with a Modbus exception and changes
nothing: a write to a read-only or unmapped register (ILLEGAL ADDRESS), a recipe number that
station.yaml does not map (ILLEGAL VALUE). Malformed frames are dropped by pymodbus's framer; the
station does not notice either, and neither stops inspection.

The server runs its own asyncio loop on a daemon thread; `start` returns once it listens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Final

from inspector.errors import InspectorError
from inspector.lineio.signals import LineSignals, LinkMonitor
from inspector.lineio.station_config import ModbusConfig

__all__ = ["ModbusLink", "ModbusLinkError"]

logger = logging.getLogger(__name__)

LINK: Final = "modbus"
_WRITE_FUNCTIONS: Final = frozenset({6, 16, 22, 23})
_START_TIMEOUT_S: Final = 10.0


class ModbusLinkError(InspectorError):
    """The Modbus server could not start (port in use, no permission for a port below 1024)."""


class ModbusLink:
    """The station's Modbus TCP server.

    Args:
        config: host, port and register addresses (station.yaml ``modbus``).
        signals: the handshake state it serves.
        monitor: where its state (clients, last request, errors) is reported.
        triggers: whether the PLC may write the trigger counter (triggered mode); when False a write to
            it is refused (ILLEGAL ADDRESS) like one to any read-only register.
    """

    def __init__(self, config: ModbusConfig, signals: LineSignals, monitor: LinkMonitor, *,
                 triggers: bool = True) -> None:
        self._config = config
        self._signals = signals
        self._monitor = monitor
        self._registers = config.registers.by_name()
        self._writable = {self._registers["recipe_requested"]: "recipe"}
        if triggers:                    # continuous mode answers no trigger: its register is read-only there
            self._writable[self._registers["trigger"]] = "trigger"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        monitor.register(LINK, f"{config.host}:{config.port}")

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the configured port; returns when it does.

        Raises:
            ModbusLinkError: the server could not listen (the message says where and why).
        """
        self._thread = threading.Thread(target=self._run, name="inspector-modbus", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._start_error is not None:
            self.stop()
            where = f"{self._config.host}:{self._config.port}"
            msg = f"Modbus server could not listen on {where}: {self._start_error or 'timed out'}; " \
                  f"check modbus.port in station.yaml (ports below 1024 need privileges)"
            raise ModbusLinkError(msg)
        self._monitor.update(LINK, up=True)

    def stop(self) -> None:
        """Close the server and its connections; idempotent."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(timeout=5)
            except Exception:
                logger.exception("stopping the Modbus server failed")
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._monitor.update(LINK, up=False)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:          # reported to start(); the thread ends
            self._start_error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer

        self._loop = asyncio.get_running_loop()
        self._server = ModbusTcpServer(
            self._device(),
            address=(self._config.host, self._config.port),
            trace_connect=self._on_connect,
            trace_pdu=self._on_pdu,
        )
        await self._server.serve_forever(background=True)   # raises when it cannot listen
        self._ready.set()
        await self._server.serving

    def _device(self) -> Any:
        from pymodbus.simulator import DataType, SimData, SimDevice

        used = set(self._registers.values())
        top = max(used)
        # One block from 0 to the highest mapped address; unmapped addresses are invalid.
        data = [
            SimData(address, values=0, datatype=DataType.REGISTERS, readonly=address not in self._writable)
            if address in used else SimData(address, datatype=DataType.INVALID)
            for address in range(top + 1)
        ]
        return SimDevice(0, simdata=data, action=self._action)

    # ---- pymodbus callbacks (the server's loop thread) ----------------------------------------

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> Any:
        from pymodbus.constants import ExcCodes

        if function_code in _WRITE_FUNCTIONS and values is not None:
            # pymodbus already refused read-only and unmapped addresses; check the values first,
            # then apply, so that a refused write changes nothing.
            for i, value in enumerate(values):
                if self._writable.get(address + i) == "recipe" and not self._signals.can_request_recipe(int(value)):
                    logger.warning("PLC requested recipe number %d, which station.yaml does not map", int(value))
                    return ExcCodes.ILLEGAL_VALUE       # counted as an error by _on_pdu
            for i, value in enumerate(values):
                kind = self._writable.get(address + i)
                if kind == "trigger":
                    self._signals.write_trigger(int(value))
                elif kind == "recipe":
                    self._signals.write_recipe_requested(int(value))
        snap = self._signals.snapshot()
        for name, reg in self._registers.items():
            registers[reg - start_address] = int(getattr(snap, name))
        self._monitor.update(LINK, message=True)
        return None

    def _on_connect(self, connected: bool) -> None:
        self._monitor.update(LINK, clients_delta=1 if connected else -1)

    def _on_pdu(self, sending: bool, pdu: Any) -> Any:
        code: int = getattr(pdu, "exception_code", 0)
        if sending and code:
            self._monitor.update(LINK, error=f"refused function {pdu.function_code & 0x7F} "
                                             f"(exception {code})")
        return pdu
