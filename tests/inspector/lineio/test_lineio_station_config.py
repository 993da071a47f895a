"""station.yaml: every key checked, every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.lineio.station_config import StationConfigError, load_station_config, parse_station_config

GOOD = """
station: line3-cam1
mode: triggered
deadline_ms: 250
recipes:
  - {number: 1, file: ../recipes/fryum_demo.yaml}
  - {number: 7, file: /abs/other.yaml}
initial_recipe: 1
modbus: {host: 127.0.0.1, port: 1502, registers: {trigger: 12}}
opcua: {port: 4841, allow_anonymous: true}
mqtt: {host: broker, topic: "plant/{station}/result", spool_max_messages: 100}
"""


def test_a_good_file_is_read_with_defaults_and_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "stations").mkdir()
    path = tmp_path / "stations" / "station.yaml"
    path.write_text(GOOD)
    config = load_station_config(path)
    assert config.mode == "triggered" and config.deadline_ms == 250.0
    assert config.modbus is not None and config.modbus.registers.trigger == 12 and config.modbus.registers.verdict == 4
    assert config.recipe_file(1) == (tmp_path / "recipes" / "fryum_demo.yaml").resolve()
    assert config.recipe_file(7) == Path("/abs/other.yaml")
    assert config.recipe_numbers == {1, 7}
    assert config.mqtt is not None and config.mqtt_topic(config.mqtt.topic) == "plant/line3-cam1/result"
    assert config.opcua is not None and config.opcua.allow_anonymous


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("deadline_ms: 250", "deadline_ms: 250\nbogus: 1"), "bogus", "not a known field"),
        (("registers: {trigger: 12}", "registers: {triger: 12}"), "modbus.registers.triger", "did you mean 'trigger'"),
        (("registers: {trigger: 12}", "registers: {trigger: 4}"), "modbus.registers.verdict", "address of trigger"),
        (("deadline_ms: 250", "deadline_ms: fast"), "deadline_ms", "must be a number"),
        (("deadline_ms: 250", "deadline_ms: 0"), "deadline_ms", "above 0"),
        (("mode: triggered", "mode: sometimes"), "mode", "must be one of"),
        (("initial_recipe: 1", "initial_recipe: 3"), "initial_recipe", "not a number in recipes"),
        (("number: 7", "number: 1"), "recipes[1].number", "given twice"),
        (("port: 1502", "port: 70000"), "modbus.port", "1..65535"),
        (("allow_anonymous: true", "allow_anonymous: false"), "opcua.users", "no client could log in"),
        (('topic: "plant/{station}/result"', 'topic: "plant/#"'), "mqtt.topic", "without wildcards"),
        (("station: line3-cam1", "station: line3-cam1\npath: /x"), "path", "not a known field"),
    ],
)
def test_errors_name_the_file_and_the_field(change: tuple[str, str], field: str, words: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(StationConfigError) as err:
        parse_station_config(text, path="stations/l3.yaml")
    assert err.value.field == field
    assert str(err.value).startswith(f"stations/l3.yaml: {field} ") and words in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(StationConfigError, match="station file not found"):
        load_station_config(tmp_path / "nope.yaml")
    with pytest.raises(StationConfigError, match="s.yaml: YAML syntax error at line 2"):
        parse_station_config("station: [", path="s.yaml")
    with pytest.raises(StationConfigError, match="must be a mapping"):
        parse_station_config("- 1", path="s.yaml")


def test_duplicate_keys_and_special_files_are_refused(tmp_path: Path) -> None:
    import os

    with pytest.raises(StationConfigError, match=r"s\.yaml: YAML syntax error at line 3.*found the key 'mode' twice"):
        parse_station_config("station: a\nmode: continuous\nmode: triggered\n", path="s.yaml")
    fifo = tmp_path / "station.yaml"
    os.mkfifo(fifo)
    with pytest.raises(StationConfigError, match=r"station\.yaml: cannot be read \(.* is a FIFO, not a regular"):
        load_station_config(fifo)
    with pytest.raises(StationConfigError, match=r"/dev/zero: cannot be read \(/dev/zero is a device"):
        load_station_config(Path("/dev/zero"))
