"""Station IO configuration: one validated ``station.yaml`` per station (not per recipe).

Read once with a safe YAML loader into frozen dataclasses; unknown keys are refused with a "did you
mean", every value is checked against its type and range, and every error names the file and the
dotted field::

    stations/line3.yaml: modbus.registers.trigger must be a whole number, got 'two'

A section that is absent turns its link off. Relative recipe paths are relative to the station file.
Secrets are never written in the file: a password is named by the environment variable that holds it.

Example ``station.yaml``::

    station: line3-cam1
    mode: triggered            # or continuous
    deadline_ms: 500           # a result later than this is answered as ERROR
    recipes:                   # PLC recipe number (HR7) -> recipe file
      - {number: 1, file: ../recipes/fryum_demo.yaml}
    initial_recipe: 1
    modbus: {host: 0.0.0.0, port: 502}
    opcua: {host: 0.0.0.0, port: 4840, allow_anonymous: false,
            users: [{name: plc, password_env: INSPECTOR_OPCUA_PLC_PASSWORD}]}
    mqtt: {host: broker.local, port: 1883, topic: "inspector/{station}/result"}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, NoReturn

from inspector.errors import InspectorError, RecipeError

__all__ = [
    "ModbusConfig",
    "ModbusRegisters",
    "MqttConfig",
    "OpcUaConfig",
    "OpcUaUser",
    "RecipeSlot",
    "StationConfig",
    "StationConfigError",
    "load_station_config",
    "parse_station_config",
]

_MAX_STATION_FILE_BYTES: Final = 1 << 20     # a station.yaml is a page of settings, as a recipe is

MAX_REGISTER: Final = 65_535


class StationConfigError(InspectorError):
    """A station.yaml is missing, malformed or invalid (``.path``, ``.field`` as `RecipeError` has them)."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.field = field


@dataclass(frozen=True, kw_only=True)
class ModbusRegisters:
    """Holding-register addresses (0-based) of each signal; docs/plc.md has the meaning of each."""

    heartbeat: int = 0
    status: int = 1
    trigger: int = 2            # written by the PLC
    result: int = 3
    verdict: int = 4
    score: int = 5
    defects: int = 6
    recipe_requested: int = 7   # written by the PLC
    recipe_active: int = 8

    def by_name(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class ModbusConfig:
    host: str = "0.0.0.0"       # noqa: S104 - a PLC on the line network must reach the station
    port: int = 502
    registers: ModbusRegisters = field(default_factory=ModbusRegisters)


@dataclass(frozen=True, kw_only=True)
class OpcUaUser:
    name: str
    password_env: str           # the environment variable that holds the password


@dataclass(frozen=True, kw_only=True)
class OpcUaConfig:
    host: str = "0.0.0.0"       # noqa: S104
    port: int = 4840
    allow_anonymous: bool = False
    users: tuple[OpcUaUser, ...] = ()
    pki_dir: Path | None = None  # certificate and key; default <data dir>/opcua


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    topic: str = "inspector/{station}/result"          # {station} is replaced by the station name
    status_topic: str = "inspector/{station}/status"   # retained "online"; last will "offline"
    client_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    keepalive_s: int = 10
    spool_dir: Path | None = None                      # default <data dir>/mqtt-spool/<station>
    spool_max_messages: int = 10_000                   # the oldest are dropped (and counted) beyond this


@dataclass(frozen=True, kw_only=True)
class RecipeSlot:
    number: int                 # what the PLC writes into HR7
    file: Path


@dataclass(frozen=True, kw_only=True)
class StationConfig:
    """A station's line IO. ``path`` is the file it was read from (not a key of the file)."""

    station: str
    mode: Literal["triggered", "continuous"] = "continuous"
    deadline_ms: float = 1000.0
    recipes: tuple[RecipeSlot, ...] = ()
    initial_recipe: int | None = None
    modbus: ModbusConfig | None = None
    opcua: OpcUaConfig | None = None
    mqtt: MqttConfig | None = None
    path: Path | None = None

    def recipe_file(self, number: int) -> Path:
        """The recipe file of a PLC recipe number, absolute (relative paths are relative to the station file).

        Raises:
            KeyError: the number is not in ``recipes``.
        """
        for slot in self.recipes:
            if slot.number == number:
                base = self.path.parent if self.path is not None else Path.cwd()
                return slot.file if slot.file.is_absolute() else (base / slot.file).resolve()
        raise KeyError(number)

    @property
    def recipe_numbers(self) -> frozenset[int]:
        return frozenset(slot.number for slot in self.recipes)

    def mqtt_topic(self, template: str) -> str:
        return template.replace("{station}", self.station)


def load_station_config(path: str | Path) -> StationConfig:
    """Read and validate a station.yaml.

    Raises:
        StationConfigError: the file is missing, is not YAML, or a field is wrong (the message names it).
    """
    from models.files import read_bounded

    file = Path(path)
    try:
        # a regular file of a page or so, checked before reading: a device or FIFO is refused at once
        text = read_bounded(file, _MAX_STATION_FILE_BYTES, what="station").decode("utf-8")
    except FileNotFoundError as exc:
        msg = f"{file}: station file not found; pass the path of a station.yaml (see docs/plc.md)"
        raise StationConfigError(msg, path=file) from exc
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{file}: cannot be read ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})"
        raise StationConfigError(msg, path=file) from exc
    return parse_station_config(text, path=file)


def parse_station_config(text: str, *, path: str | Path | None = None) -> StationConfig:
    """Validate the text of a station.yaml; ``path`` is used in messages and to resolve recipe files."""
    # The recipe loader's checker: the same conversions, "did you mean" and messages as recipes have.
    from inspector.recipe_check import RecipeChecker, parse_yaml

    file = Path(path) if path is not None else None
    where = str(file) if file is not None else "<station.yaml>"
    try:
        raw = parse_yaml(text, where, file)
        if not isinstance(raw, dict):
            msg = f"{where}: must be a mapping of station settings (see docs/plc.md), got {type(raw).__name__}"
            raise StationConfigError(msg, path=file)
        if "path" in raw:   # a field of the dataclass, filled from where the file was read, never a key
            msg = f"{where}: path is not a known field (the station file's own location is used)"
            raise StationConfigError(msg, path=file, field="path")
        config: StationConfig = RecipeChecker(where, file).build(StationConfig, raw, "")
    except RecipeError as exc:
        raise StationConfigError(str(exc), path=file, field=exc.field) from exc
    config = dataclasses.replace(config, path=file)
    _validate(config, where, file)
    return config


def _validate(config: StationConfig, where: str, file: Path | None) -> None:
    def fail(name: str, message: str) -> NoReturn:
        msg = f"{where}: {name} {message}"
        raise StationConfigError(msg, path=file, field=name)

    if not config.station.strip():
        fail("station", "must be a non-empty name")
    if not 0 < config.deadline_ms <= 600_000:
        fail("deadline_ms", f"must be above 0 and at most 600000 (10 min), got {config.deadline_ms}")
    seen: set[int] = set()
    for i, slot in enumerate(config.recipes):
        if not 1 <= slot.number <= MAX_REGISTER:
            fail(f"recipes[{i}].number", f"must be 1..{MAX_REGISTER} (0 means 'switching'), got {slot.number}")
        if slot.number in seen:
            fail(f"recipes[{i}].number", f"{slot.number} is given twice")
        seen.add(slot.number)
    if config.initial_recipe is not None and config.initial_recipe not in seen:
        fail("initial_recipe", f"is {config.initial_recipe}, which is not a number in recipes ({sorted(seen)})")
    if config.mode == "triggered" and config.modbus is None and config.opcua is None:
        fail("mode", "is triggered, but neither modbus nor opcua is configured: nothing could trigger")
    for name, link in (("modbus", config.modbus), ("opcua", config.opcua), ("mqtt", config.mqtt)):
        if link is not None and not 0 < link.port <= MAX_REGISTER:
            fail(f"{name}.port", f"must be 1..65535, got {link.port}")
    if config.modbus is not None:
        addresses: dict[int, str] = {}
        for name, address in config.modbus.registers.by_name().items():
            if not 0 <= address <= 9_999:
                fail(f"modbus.registers.{name}", f"must be 0..9999, got {address}")
            if address in addresses:
                fail(f"modbus.registers.{name}", f"is {address}, the address of {addresses[address]} already")
            addresses[address] = name
    if config.opcua is not None and not config.opcua.allow_anonymous and not config.opcua.users:
        fail("opcua.users", "is empty and allow_anonymous is false: no client could log in; add a user "
                            "({name: plc, password_env: VAR}) or set allow_anonymous: true")
    if config.mqtt is not None:
        if not config.mqtt.topic.strip() or "#" in config.mqtt.topic or "+" in config.mqtt.topic:
            fail("mqtt.topic", f"must be a topic without wildcards, got {config.mqtt.topic!r}")
        if config.mqtt.spool_max_messages < 1:
            fail("mqtt.spool_max_messages", f"must be at least 1, got {config.mqtt.spool_max_messages}")
        if not 1 <= config.mqtt.keepalive_s <= 3600:
            fail("mqtt.keepalive_s", f"must be 1..3600, got {config.mqtt.keepalive_s}")
