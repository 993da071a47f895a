"""The station on the production line: PLC trigger and result over Modbus TCP and OPC UA, results over MQTT.

See docs/plc.md. The protocol stacks (pymodbus, asyncua, paho-mqtt) are imported only when a link of
that kind is started, so importing this package stays cheap.
"""

from inspector.lineio.line import LineIO
from inspector.lineio.signals import LineSignals, LinkMonitor, LinkState, StatusBits
from inspector.lineio.station_config import StationConfig, StationConfigError, load_station_config
from inspector.lineio.trigger import TriggeredRunner, TriggerStats

__all__ = [
    "LineIO",
    "LineSignals",
    "LinkMonitor",
    "LinkState",
    "StationConfig",
    "StationConfigError",
    "StatusBits",
    "TriggerStats",
    "TriggeredRunner",
    "load_station_config",
]
