"""OPC UA server (asyncua): the handshake signals as nodes under an ``Inspector`` object, and ``Trigger()``.

Nodes (namespace ``urn:inspector``): Heartbeat, Ready, Busy, Fault, TriggerCount, ResultCount,
Verdict (1 PASS, 2 REVIEW, 3 FAIL, 4 ERROR), Score (the image score, a Double), DefectCount,
RecipeRequested (the only writable node; numbers station.yaml does not map are put back), RecipeActive.
The method ``Trigger()`` requests one inspection and returns its trigger count; it is answered
like a Modbus trigger (ResultCount reaches that count after Verdict, Score and DefectCount).

Security: only Basic256Sha256 endpoints (Sign, SignAndEncrypt); no unencrypted endpoint. Clients log
in with a user name and password from station.yaml (the password is read from the environment
variable named there); anonymous access only when ``allow_anonymous: true``. The server's
certificate and private key are generated on first start in ``<data dir>/opcua`` (or ``pki_dir``),
the key file readable by its owner only (0600), and reused afterwards.

The server runs its own asyncio loop on a daemon thread; the nodes follow `LineSignals` every 20 ms.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Final

from inspector import paths
from inspector.errors import InspectorError
from inspector.lineio.signals import LineSignals, LinkMonitor, SignalSnapshot, StatusBits
from inspector.lineio.station_config import OpcUaConfig

__all__ = ["NAMESPACE", "NODE_NAMES", "OpcUaLink", "OpcUaLinkError", "ensure_certificate"]

logger = logging.getLogger(__name__)

LINK: Final = "opcua"
NAMESPACE: Final = "urn:inspector"
NODE_NAMES: Final = ("Heartbeat", "Ready", "Busy", "Fault", "TriggerCount", "ResultCount", "Verdict", "Score",
                     "DefectCount", "RecipeRequested", "RecipeActive")
_SYNC_S: Final = 0.02
_START_TIMEOUT_S: Final = 30.0


class OpcUaLinkError(InspectorError):
    """The OPC UA server could not start (port in use, a password variable not set, a bad certificate)."""


def ensure_certificate(folder: Path, *, app_uri: str, host_name: str) -> tuple[Path, Path]:
    """The server's certificate (DER) and private key (PEM) in ``folder``, made on first use.

    The key is written with mode 0600 from the start (never readable by others, not even briefly).

    Returns:
        (certificate file, key file).
    """
    from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file, cert_file = folder / "server-key.pem", folder / "server-cert.der"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(dump_private_key_as_pem(generate_private_key()))
    os.chmod(key_file, 0o600)        # a key copied in by hand
    asyncio.run(setup_self_signed_certificate(
        key_file, cert_file, app_uri, host_name,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": f"inspector {host_name}", "organizationName": "inspector"},
    ))
    return cert_file, key_file


class _Users:
    """asyncua user manager: user names and passwords, anonymous only when allowed."""

    def __init__(self, passwords: dict[str, str], *, allow_anonymous: bool, monitor: LinkMonitor) -> None:
        self._passwords = passwords
        self._allow_anonymous = allow_anonymous
        self._monitor = monitor

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:
            if self._allow_anonymous:
                return User(role=UserRole.User)
            self._monitor.update(LINK, error="anonymous login refused")
            return None
        expected = self._passwords.get(username)
        if expected is not None and hmac.compare_digest(expected.encode(), (password or "").encode()):
            return User(role=UserRole.User, name=username)
        self._monitor.update(LINK, error=f"login refused for user {username!r}")
        return None


class OpcUaLink:
    """The station's OPC UA server.

    Args:
        config: host, port, users and certificate folder (station.yaml ``opcua``).
        signals: the handshake state it serves.
        monitor: where its state is reported.
        station: the station name (certificate and server name).
        triggers: whether ``Trigger()`` is served (triggered mode); when False it fails with BadInvalidState.
    """

    def __init__(self, config: OpcUaConfig, signals: LineSignals, monitor: LinkMonitor, *, station: str,
                 triggers: bool = True) -> None:
        self._triggers = triggers
        self._config = config
        self._signals = signals
        self._monitor = monitor
        self._station = station
        self.endpoint = f"opc.tcp://{config.host}:{config.port}/inspector/"
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        monitor.register(LINK, f"{config.host}:{config.port}")

    def start(self) -> None:
        """Make the certificate if needed and listen; returns when the server runs.

        Raises:
            OpcUaLinkError: it could not start (the message says why and which station.yaml field to fix).
        """
        passwords: dict[str, str] = {}
        for i, user in enumerate(self._config.users):
            value = os.environ.get(user.password_env)
            if not value:
                msg = (f"OPC UA user {user.name!r}: environment variable {user.password_env} is not set "
                       f"(station.yaml opcua.users[{i}].password_env); set it to the user's password")
                raise OpcUaLinkError(msg)
            passwords[user.name] = value
        host_name = socket.gethostname()
        app_uri = f"urn:inspector:{paths.safe_name(self._station)}"
        folder = self._config.pki_dir or paths.data_dir() / "opcua"
        try:
            cert, key = ensure_certificate(folder, app_uri=app_uri, host_name=host_name)
        except (OSError, ValueError) as exc:
            msg = f"OPC UA certificate in {folder} could not be made or read: {exc}; check opcua.pki_dir"
            raise OpcUaLinkError(msg) from exc
        users = _Users(passwords, allow_anonymous=self._config.allow_anonymous, monitor=self._monitor)
        self._thread = threading.Thread(target=self._run, args=(users, cert, key, app_uri),
                                        name="inspector-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._start_error is not None:
            self.stop()
            msg = (f"OPC UA server could not listen on {self._config.host}:{self._config.port}: "
                   f"{self._start_error or 'timed out'}; check opcua.port in station.yaml")
            raise OpcUaLinkError(msg)
        self._monitor.update(LINK, up=True)

    def stop(self) -> None:
        """Stop the server; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._monitor.update(LINK, up=False)

    def _run(self, users: _Users, cert: Path, key: Path, app_uri: str) -> None:
        try:
            asyncio.run(self._serve(users, cert, key, app_uri))
        except BaseException as exc:
            logger.exception("OPC UA server stopped")
            self._start_error = exc
            self._ready.set()

    async def _serve(self, users: _Users, cert: Path, key: Path, app_uri: str) -> None:
        from asyncua import Server, ua

        server = Server(user_manager=users)  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"inspector {self._station}")
        await server.set_application_uri(app_uri)
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                    ua.SecurityPolicyType.Basic256Sha256_Sign])
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self._config.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        await server.load_certificate(cert)
        await server.load_private_key(key)
        ns = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(ns, "Inspector")
        kinds = {"Ready": ua.VariantType.Boolean, "Busy": ua.VariantType.Boolean, "Fault": ua.VariantType.Boolean,
                 "Score": ua.VariantType.Double}
        nodes = {}
        for name in NODE_NAMES:
            kind = kinds.get(name, ua.VariantType.UInt16)
            initial: Any = False if kind is ua.VariantType.Boolean else (0.0 if name == "Score" else 0)
            nodes[name] = await obj.add_variable(ns, name, ua.Variant(initial, kind))
        await nodes["RecipeRequested"].set_writable()

        async def trigger(parent: Any) -> Any:
            if not self._triggers:          # continuous mode: nothing would answer it (a status, not a raise:
                # asyncua logs a raised exception with its traceback and answers BadUnexpectedError)
                self._monitor.update(LINK, error="Trigger() refused: the station runs in continuous mode")
                return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidState))
            count = self._signals.add_trigger()
            self._monitor.update(LINK, message=True)
            return [ua.Variant(count, ua.VariantType.UInt16)]

        await obj.add_method(ns, "Trigger", trigger, [], [ua.VariantType.UInt16])
        async with server:
            self._ready.set()
            written: dict[str, Any] = {}
            sessions = 0
            while not self._stop.is_set():
                await self._sync(nodes, written, kinds)
                now = _active_sessions(server)
                if now != sessions:             # the footer's "N clients"
                    sessions = now
                    self._monitor.update(LINK, clients=now)
                await asyncio.sleep(_SYNC_S)

    async def _sync(self, nodes: dict[str, Any], written: dict[str, Any], kinds: dict[str, Any]) -> None:
        from asyncua import ua

        requested = await nodes["RecipeRequested"].read_value()
        if "RecipeRequested" in written and requested != written["RecipeRequested"]:
            if self._signals.can_request_recipe(int(requested)):
                self._signals.write_recipe_requested(int(requested))
                self._monitor.update(LINK, message=True)
            else:
                self._monitor.update(LINK, error=f"recipe number {requested} requested, not in station.yaml")
            written.pop("RecipeRequested")        # write back what the station holds
        for name, value in _node_values(self._signals.snapshot()).items():
            if written.get(name) != value:
                kind = kinds.get(name, ua.VariantType.UInt16)
                await nodes[name].write_value(ua.Variant(value, kind))
                written[name] = value


def _active_sessions(server: Any) -> int:
    """Client sessions logged in now. asyncua has no public count: its session table is read, and a
    version without it reads 0 (the footer then says 0 clients; nothing else depends on it)."""
    table = getattr(server.iserver, "_external_sessions", None)
    if not isinstance(table, dict):
        return 0
    return sum(1 for session in list(table.values()) if session.is_activated())


def _node_values(snap: SignalSnapshot) -> dict[str, Any]:
    bits = snap.bits
    return {
        "Heartbeat": snap.heartbeat,
        "Ready": bool(bits & StatusBits.READY),
        "Busy": bool(bits & StatusBits.BUSY),
        "Fault": bool(bits & StatusBits.FAULT),
        "TriggerCount": snap.trigger,
        "Verdict": snap.verdict,
        "Score": snap.score / 10_000,
        "DefectCount": snap.defects,
        "RecipeRequested": snap.recipe_requested,
        "RecipeActive": snap.recipe_active,
        "ResultCount": snap.result,       # last: a client that sees it change reads a complete answer
    }
