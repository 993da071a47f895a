"""MQTT publisher against a real mosquitto on 127.0.0.1: order, QoS 1, outage spooling, retained status."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from inspector.lineio.mqtt import SEQ_BLOCK, SEQ_FILE, MessageSpool, MqttPublisher
from inspector.lineio.signals import LinkMonitor
from inspector.lineio.station_config import MqttConfig
from inspector.results import InspectionResult, Verdict
from tests.helpers.lineio import Broker, free_port

OUTAGE_S = 30.0


def result(i: int) -> InspectionResult:
    return InspectionResult(frame_id=i, timestamp=1_700_000_000.0 + i, source="cam", recipe="fryum",
                            model_version="v2", verdict=Verdict.FAIL if i % 7 == 0 else Verdict.PASS,
                            score=0.01 * i, lot="L42")


class Subscriber:
    """A QoS 1 subscriber with a persistent session, so that it keeps what the broker queued for it."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber") -> None:
        self.seqs: list[int] = []
        self.payloads: list[dict[str, object]] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)

        def on_connect(client: paho.Client, *args: object) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*args: object) -> None:
            self.subscribed.set()

        def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
            doc = json.loads(message.payload)
            with self._lock:
                self.seqs.append(int(doc["seq"]))
                self.payloads.append(doc)

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def wait_for(self, seqs: set[int], timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if seqs <= set(self.seqs):
                    return
            time.sleep(0.02)
        missing = sorted(seqs - set(self.seqs))
        msg = f"{len(missing)} message(s) never arrived, first {missing[:10]}"
        raise AssertionError(msg)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int, tmp_path: Path, **kw: object) -> tuple[MqttPublisher, LinkMonitor]:
    monitor = LinkMonitor()
    config = MqttConfig(host="127.0.0.1", port=port, spool_dir=tmp_path / "spool", **kw)  # type: ignore[arg-type]
    return MqttPublisher(config, station="st1", monitor=monitor), monitor


def in_order_once(seqs: list[int]) -> tuple[list[int], int]:
    """The sequence with QoS 1 duplicates (re-deliveries of a number already seen) removed, and their count."""
    seen: set[int] = set()
    firsts = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            firsts.append(s)
    return firsts, len(seqs) - len(firsts)


def test_every_result_is_one_json_message_in_order(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, "inspector/st1/result")
    pub, monitor = publisher(broker.port, tmp_path)
    pub.start()
    try:
        seqs = [pub.publish(result(i), image_path=f"/archive/{i}.png") for i in range(300)]
        sub.wait_for(set(seqs))
    finally:
        pub.stop()
        sub.close()
    firsts, duplicates = in_order_once(sub.seqs)
    assert firsts == seqs and duplicates == 0
    doc = sub.payloads[7]
    assert doc["verdict"] == "FAIL" and doc["recipe"] == "fryum" and doc["model_version"] == "v2"
    assert doc["lot"] == "L42" and doc["station"] == "st1" and doc["frame_id"] == 7
    assert doc["image"] == "/archive/7.png" and str(doc["time"]).startswith("2023-11-14T22:13:27")
    assert len(pub.spool) == 0 and not list((tmp_path / "spool").glob("*.json"))
    state = monitor.get("mqtt")
    assert state is not None and state.errors == 0 and state.last_message is not None


def test_broker_outage_spools_without_blocking_and_delivers_everything_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    # The case: the broker is stopped for 30 s while a 50 parts/s line goes on, then restarted.
    sub = Subscriber(broker.port, "inspector/st1/result")
    pub, monitor = publisher(broker.port, tmp_path)
    pub.start()
    try:
        seqs = [pub.publish(result(i)) for i in range(50)]
        sub.wait_for(set(seqs))
        broker.stop()
        deadline = time.monotonic() + 5
        while pub.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not pub.connected
        during, calls = [], []
        outage_end = time.monotonic() + OUTAGE_S
        i = 50
        while time.monotonic() < outage_end:
            started = time.perf_counter()
            during.append(pub.publish(result(i)))
            calls.append(time.perf_counter() - started)
            i += 1
            time.sleep(0.02)                                  # a 50 parts/s line during the outage
        # A call that waited on the network would take seconds (connect timeout, keepalive); a spool write
        # takes about a millisecond. The median says which it is; the bound on the slowest is generous
        # (a loaded 2-core CI machine's disk can stall a write for a fraction of a second).
        typical = sorted(calls)[len(calls) // 2]
        assert typical < 0.1, f"a publish during the outage typically took {typical:.3f} s"
        assert max(calls) < 3.0, f"a publish during the outage took {max(calls):.2f} s"
        assert len(during) >= 100 and len(pub.spool) >= len(during)   # kept on disk, not lost
        state = monitor.get("mqtt")
        assert state is not None and not state.up and state.errors >= 1
        broker.start()
        after = [pub.publish(result(j)) for j in range(i, i + 50)]
        sub.wait_for(set(seqs + during + after), timeout=30)
    finally:
        pub.stop()
        sub.close()
    firsts, duplicates = in_order_once(sub.seqs)
    print(f"{OUTAGE_S:.0f} s outage: {len(during)} messages spooled meanwhile, {len(sub.seqs)} received for "
          f"{len(firsts)} sent, QoS 1 duplicates {duplicates}")
    assert firsts == seqs + during + after
    assert duplicates <= 20                                   # at most the in-flight window is sent twice
    assert len(pub.spool) == 0


def test_the_spool_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()                                        # nothing listens: the broker is down
    pub, monitor = publisher(port, tmp_path, spool_max_messages=5)
    pub.start()
    try:
        end = time.monotonic() + 10                           # the first connection attempt fails: said once
        while (state := monitor.get("mqtt")) is not None and not state.errors and time.monotonic() < end:
            time.sleep(0.02)
        assert state is not None and state.last_error == (f"cannot reach the broker at 127.0.0.1:{port}; "
                                                           f"retrying, results spooled")
        seqs = [pub.publish(result(i)) for i in range(20)]
        time.sleep(2.5)                                       # at least one more failed retry (every 1-2 s)
    finally:
        pub.stop(flush_timeout=0)
    assert len(pub.spool) == 5 and pub.spool.dropped == 15
    state = monitor.get("mqtt")
    assert state is not None and state.errors == 1 + 15 and "15 oldest dropped" in state.last_error
    again = MessageSpool(tmp_path / "spool", max_messages=5)  # the station restarts
    kept = []
    while (item := again.take_unsent()) is not None:
        kept.append(json.loads(item[1])["seq"])
    assert kept == seqs[-5:]


def test_retained_status_reads_online_then_offline(broker: Broker, tmp_path: Path) -> None:
    statuses: list[str] = []
    got = threading.Event()

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        statuses.append(message.payload.decode())
        got.set()

    pub, _ = publisher(broker.port, tmp_path)
    pub.start()
    deadline = time.monotonic() + 10
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.stop()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="status-watcher")
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("inspector/st1/status", qos=1)
    watcher.loop_start()
    try:
        assert got.wait(10)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert statuses == ["offline"]                            # retained: a late subscriber reads it


def test_last_will_says_offline_when_the_station_vanishes(broker: Broker, tmp_path: Path) -> None:
    pub, _ = publisher(broker.port, tmp_path, keepalive_s=1)
    pub.start()
    deadline = time.monotonic() + 10
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    statuses: list[str] = []
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="will-watcher")
    watcher.on_message = lambda c, u, m: statuses.append(m.payload.decode())
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe("inspector/st1/status", qos=1)
    watcher.loop_start()
    try:
        deadline = time.monotonic() + 5
        while statuses[-1:] != ["online"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert statuses[-1:] == ["online"]
        pub._client.loop_stop()                               # the station process hangs or dies:
        sock = pub._client.socket()                           # no DISCONNECT is ever sent
        assert sock is not None
        sock.close()
        deadline = time.monotonic() + 10
        while statuses[-1:] != ["offline"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert statuses[-1:] == ["offline"]
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        pub.stop(flush_timeout=0)                             # its sender thread, which outlived the socket


def test_seq_never_starts_again_after_a_restart_with_an_empty_spool(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    first = MessageSpool(folder, max_messages=5_000)
    used = [first.append(lambda seq: json.dumps({"seq": seq}).encode()) for _ in range(SEQ_BLOCK + 2)]
    for seq in used:                                          # every message delivered: the spool is empty
        first.remove(seq)
    assert len(first) == 0 and not list(folder.glob("*.json"))
    again = MessageSpool(folder, max_messages=5_000)          # the station restarts
    seq = again.append(lambda seq: json.dumps({"seq": seq}).encode())
    assert seq > max(used)                                    # a subscriber dropping seen seqs keeps it
    (folder / SEQ_FILE).write_text("twelve\n")
    with pytest.raises(ValueError, match=r"next-seq: holds 'twelve', not the next message number"):
        MessageSpool(folder, max_messages=5_000)
