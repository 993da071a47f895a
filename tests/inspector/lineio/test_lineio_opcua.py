"""OPC UA server read by a real asyncua client over Basic256Sha256, including the Trigger() method."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from inspector.capture import ArraySource
from inspector.lineio.line import LineIO
from inspector.lineio.opcua import NAMESPACE, NODE_NAMES
from inspector.lineio.station_config import OpcUaConfig, OpcUaUser, RecipeSlot, StationConfig
from inspector.lineio.trigger import TriggeredRunner
from inspector.results import Frame, InspectionResult, Verdict
from tests.helpers.lineio import free_port

PASSWORD_ENV = "INSPECTOR_TEST_OPCUA_PASSWORD"


class MeanGrey:
    """A fast fake detector: PASS, with the mean grey level as the score."""

    name = "r1"

    def inspect(self, frame: Frame) -> InspectionResult:
        return InspectionResult(frame_id=frame.frame_id, timestamp=frame.timestamp, source=frame.source,
                                recipe=self.name, model_version="v0", verdict=Verdict.PASS,
                                score=float(frame.image_bgr.mean()) / 255)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LineIO, str]]:
    """One server for the module: asyncua builds its address space in ~10 s on a loaded 2-core machine."""
    os.environ[PASSWORD_ENV] = "s3cret-plc"
    config = StationConfig(
        station="t1", mode="triggered", deadline_ms=2000, recipes=(RecipeSlot(number=1, file=Path("a.yaml")),),
        initial_recipe=1,
        opcua=OpcUaConfig(host="127.0.0.1", port=free_port(), pki_dir=tmp_path_factory.mktemp("pki"),
                          users=(OpcUaUser(name="plc", password_env=PASSWORD_ENV),)),
    )
    io = LineIO(config, active_recipe=1)
    io.start()
    runner = TriggeredRunner(ArraySource([np.full((8, 8, 3), 60, np.uint8)], loop=True), MeanGrey(),
                             io.signals, deadline_ms=2000)
    runner.start()
    assert config.opcua is not None
    yield io, f"opc.tcp://127.0.0.1:{config.opcua.port}/inspector/"
    runner.stop()
    io.stop()
    del os.environ[PASSWORD_ENV]


async def _client(url: str, folder: Path, *, user: str | None, password: str | None) -> Client:
    folder.mkdir(exist_ok=True)
    key, cert = folder / "client-key.pem", folder / "client-cert.der"
    await setup_self_signed_certificate(key, cert, "urn:inspector:test-plc", "localhost",
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test plc"})
    client = Client(url, timeout=10)
    client.application_uri = "urn:inspector:test-plc"
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


def test_nodes_and_trigger_over_basic256sha256(station: tuple[LineIO, str], tmp_path: Path) -> None:
    io, url = station

    async def session() -> dict[str, object]:
        client = await _client(url, tmp_path / "client", user="plc", password="s3cret-plc")
        async with client:
            ns = await client.get_namespace_index(NAMESPACE)
            obj = await client.nodes.objects.get_child(f"{ns}:Inspector")
            nodes = {name: await obj.get_child(f"{ns}:{name}") for name in NODE_NAMES}
            before = {name: await node.read_value() for name, node in nodes.items()}
            start = await nodes["ResultCount"].read_value()
            count = await obj.call_method(f"{ns}:Trigger")
            end = time.monotonic() + 10
            while await nodes["ResultCount"].read_value() != count and time.monotonic() < end:
                await asyncio.sleep(0.01)
            after = {name: await node.read_value() for name, node in nodes.items()}
            end = time.monotonic() + 10
            while (state := io.monitor.get("opcua")) is not None and state.clients != 1 and time.monotonic() < end:
                await asyncio.sleep(0.02)
            clients = state.clients if state is not None else -1
            return {"before": before, "count": count - start, "after": after, "clients": clients}

    got = asyncio.run(session())
    before, after = got["before"], got["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["Ready"] is True and before["Fault"] is False and before["RecipeActive"] == 1
    assert got["count"] == 1
    assert after["ResultCount"] == after["TriggerCount"] == before["ResultCount"] + 1 and after["Verdict"] == 1
    assert after["Score"] == pytest.approx(60 / 255, abs=1e-4) and after["Busy"] is False
    assert got["clients"] == 1                         # the footer's "1 client" while the session is open
    end = time.monotonic() + 10
    while (state := io.monitor.get("opcua")) is not None and state.clients and time.monotonic() < end:
        time.sleep(0.02)
    assert state is not None and state.clients == 0
    key = io.config.opcua.pki_dir / "server-key.pem"  # type: ignore[union-attr, operator]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_anonymous_and_wrong_password_are_refused(station: tuple[LineIO, str], tmp_path: Path) -> None:
    io, url = station

    async def connect(user: str | None, password: str | None) -> None:
        client = await _client(url, tmp_path / "client", user=user, password=password)
        async with client:
            pass

    for user, password in ((None, None), ("plc", "wrong")):
        with pytest.raises((ua.UaError, ua.UaStatusCodeError, ConnectionError, asyncio.TimeoutError)):
            asyncio.run(connect(user, password))
    state = io.monitor.get("opcua")
    assert state is not None and state.up and state.errors >= 1   # anonymous is refused before the login


def test_no_unencrypted_endpoint(station: tuple[LineIO, str]) -> None:
    _, url = station

    async def endpoints() -> list[str]:
        client = Client(url, timeout=10)
        return [e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in await client.connect_and_get_server_endpoints()]

    assert set(asyncio.run(endpoints())) == {"Basic256Sha256"}


def test_first_start_makes_the_certificate_in_the_data_dir_reuses_it_and_anonymous_only_when_allowed(  # continuous
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    port = free_port()
    config = StationConfig(station="t2", recipes=(RecipeSlot(number=1, file=Path("a.yaml")),
                                                  RecipeSlot(number=2, file=Path("b.yaml"))),
                           opcua=OpcUaConfig(host="127.0.0.1", port=port, allow_anonymous=True))
    folder = tmp_path / "data" / "opcua"
    assert not folder.exists()
    url = f"opc.tcp://127.0.0.1:{port}/inspector/"

    async def anonymous_session() -> tuple[int, int, int]:
        client = await _client(url, tmp_path / "client", user=None, password=None)
        async with client:
            ns = await client.get_namespace_index(NAMESPACE)
            obj = await client.nodes.objects.get_child(f"{ns}:Inspector")
            beat = await obj.get_child(f"{ns}:Heartbeat")
            first = await beat.read_value()
            end = time.monotonic() + 10
            while await beat.read_value() == first and time.monotonic() < end:
                await asyncio.sleep(0.05)
            requested = await obj.get_child(f"{ns}:RecipeRequested")
            await requested.write_value(ua.Variant(2, ua.VariantType.UInt16))
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):
                await obj.call_method(f"{ns}:Trigger")         # continuous mode: nothing would answer it
            return first, await beat.read_value(), await requested.read_value()

    io = LineIO(config, active_recipe=1)
    io.start()
    try:
        first, later, requested = asyncio.run(anonymous_session())
        end = time.monotonic() + 10
        while io.signals.recipe_requested != 2 and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        io.stop()
    assert later > first and requested == 2 and io.signals.recipe_requested == 2
    key, cert = folder / "server-key.pem", folder / "server-cert.der"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = key.read_bytes(), cert.read_bytes()
    again = LineIO(config, active_recipe=1)      # the second start reuses the certificate and key
    again.start()
    again.stop()
    assert (key.read_bytes(), cert.read_bytes()) == made
