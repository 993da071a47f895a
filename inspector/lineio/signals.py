"""The station's side of the PLC handshake, shared by the Modbus and OPC UA servers, and the links' states.

`LineSignals` is the one copy of the signals (docs/plc.md has the register map and a timing diagram);
the servers only read it and forward the two things a PLC may write (the trigger counter and the
requested recipe). Every method is thread-safe and quick: the servers call it from their asyncio
threads, the trigger controller from its own.

The trigger is a counter, not an edge: each increment is one inspection request, so a slow poll can
neither miss nor double one. Pending triggers are answered one by one, in order; the station writes
verdict, score and defect count first and the result counter last, so a PLC that sees the result
counter equal its trigger counter reads a complete answer.

`LinkMonitor` keeps each link's state (connected, last message, errors) as frozen `LinkState`
snapshots for the CLI and the app's footer.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
import time
from dataclasses import dataclass
from typing import Final

from inspector.results import InspectionResult, Verdict

__all__ = [
    "MAX_PENDING_TRIGGERS",
    "LineSignals",
    "LinkMonitor",
    "LinkState",
    "SignalSnapshot",
    "StatusBits",
    "Trigger",
    "verdict_code",
]

logger = logging.getLogger(__name__)

_WRAP: Final = 65_536
# More pending triggers than this in one write is not a PLC counting parts: it is a PLC (or a restart of
# either side) whose counter is out of step. The station then answers the newest count only, once.
MAX_PENDING_TRIGGERS: Final = 64
_VERDICT_CODES: Final = {Verdict.PASS: 1, Verdict.REVIEW: 2, Verdict.FAIL: 3, Verdict.ERROR: 4}


class StatusBits(enum.IntFlag):
    """HR1, the station's status word."""

    READY = 1
    BUSY = 2
    RESULT_VALID = 4
    FAULT = 8


def verdict_code(verdict: Verdict) -> int:
    """HR4: 1 PASS, 2 REVIEW, 3 FAIL, 4 ERROR."""
    return _VERDICT_CODES[verdict]


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """One inspection request: the counter value it is answered with, and when the station saw it."""

    count: int
    seen: float                 # time.monotonic()


@dataclass(frozen=True, kw_only=True)
class SignalSnapshot:
    """The signals at one moment, as the PLC reads them (register values, 0..65535)."""

    heartbeat: int
    status: int
    trigger: int
    result: int
    verdict: int
    score: int
    defects: int
    recipe_requested: int
    recipe_active: int

    @property
    def bits(self) -> StatusBits:
        return StatusBits(self.status)


class LineSignals:
    """The handshake state behind HR0..HR8 and the OPC UA nodes.

    Args:
        recipe_numbers: the recipe numbers a PLC may request (HR7); others are refused.
        active_recipe: the recipe number in use at start (0: none yet).
    """

    def __init__(self, *, recipe_numbers: frozenset[int] = frozenset(), active_recipe: int = 0) -> None:
        self._cond = threading.Condition()
        self._recipe_numbers = recipe_numbers
        self._heartbeat = 0
        self._trigger = 0
        self._result = 0
        self._verdict = 0
        self._score = 0
        self._defects = 0
        self._requested = active_recipe
        self._active = active_recipe
        self._busy = False
        self._result_valid = False         # never true at start: no old result is offered as new
        self._faults: dict[str, str] = {}
        self._pending: collections.deque[Trigger] = collections.deque()
        self._synced = False               # the first trigger write after start counts once
        self._resyncs = 0

    # ---- written by the PLC (server threads) ------------------------------------------------

    def write_trigger(self, value: int) -> None:
        """The PLC wrote the trigger counter: queue one request per increment since the last write."""
        value %= _WRAP
        now = time.monotonic()
        with self._cond:
            step = (value - self._trigger) % _WRAP
            if step == 0:
                return
            if not self._synced or step > MAX_PENDING_TRIGGERS:
                if self._synced:
                    self._resyncs += 1
                    logger.warning("trigger counter jumped from %d to %d: answering %d once (counters resynced)",
                                   self._trigger, value, value)
                self._pending.append(Trigger(count=value, seen=now))
            else:
                for i in range(1, step + 1):
                    self._pending.append(Trigger(count=(self._trigger + i) % _WRAP, seen=now))
            self._synced = True
            self._trigger = value
            self._busy = True
            self._result_valid = False
            self._cond.notify_all()

    def add_trigger(self) -> int:
        """One more trigger (OPC UA ``Trigger()``, a software trigger); returns its count."""
        with self._cond:
            value = (self._trigger + 1) % _WRAP
            self._synced = True
        self.write_trigger(value)
        return value

    def can_request_recipe(self, number: int) -> bool:
        return number in self._recipe_numbers

    def write_recipe_requested(self, number: int) -> None:
        """The PLC asked for recipe ``number`` (HR7); the controller switches between triggers."""
        with self._cond:
            self._requested = number
            self._cond.notify_all()

    # ---- written by the station --------------------------------------------------------------

    def next_trigger(self, timeout: float) -> Trigger | None:
        """The oldest unanswered trigger, waiting up to ``timeout`` s for one; it stays queued until answered."""
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout)
            return self._pending[0] if self._pending else None

    def answer(self, trigger: Trigger, result: InspectionResult) -> None:
        """Write the verdict, score and defect count, then the result counter (in that order, atomically)."""
        score = 0 if result.score is None else max(0, min(65_535, round(result.score * 10_000)))
        with self._cond:
            self._verdict = verdict_code(result.verdict)
            self._score = score
            self._defects = min(65_535, len(result.regions))
            self._result = trigger.count
            self._result_valid = True
            if self._pending and self._pending[0].count == trigger.count:
                self._pending.popleft()
            self._busy = bool(self._pending)

    def beat(self) -> None:
        """Advance the heartbeat (HR0), once a second."""
        with self._cond:
            self._heartbeat = (self._heartbeat + 1) % _WRAP

    def set_fault(self, key: str, reason: str | None) -> None:
        """Raise (``reason``) or clear (None) one fault; FAULT is set while any is raised."""
        with self._cond:
            if reason is None:
                self._faults.pop(key, None)
            else:
                self._faults[key] = reason

    def set_recipe_active(self, number: int) -> None:
        """HR8: the recipe in use; 0 while switching."""
        with self._cond:
            self._active = number

    # ---- read by anyone ----------------------------------------------------------------------

    @property
    def faults(self) -> dict[str, str]:
        with self._cond:
            return dict(self._faults)

    @property
    def recipe_requested(self) -> int:
        with self._cond:
            return self._requested

    @property
    def resyncs(self) -> int:
        with self._cond:
            return self._resyncs

    def snapshot(self) -> SignalSnapshot:
        with self._cond:
            bits = StatusBits(0)
            if not self._faults and self._active:
                bits |= StatusBits.READY
            if self._busy:
                bits |= StatusBits.BUSY
            if self._result_valid:
                bits |= StatusBits.RESULT_VALID
            if self._faults:
                bits |= StatusBits.FAULT
            return SignalSnapshot(heartbeat=self._heartbeat, status=int(bits), trigger=self._trigger,
                                  result=self._result, verdict=self._verdict, score=self._score,
                                  defects=self._defects, recipe_requested=self._requested,
                                  recipe_active=self._active)


@dataclass(frozen=True, kw_only=True)
class LinkState:
    """One link as the operator sees it in the footer."""

    name: str                      # "modbus", "opcua", "mqtt"
    endpoint: str                  # where it listens or connects, e.g. "0.0.0.0:502"
    up: bool = False               # the server listens / the client is connected to its broker
    clients: int = 0               # connected PLCs or OPC UA sessions (servers only)
    last_message: float | None = None   # time.time() of the last request served or message delivered
    errors: int = 0
    last_error: str = ""
    detail: str = ""               # e.g. "12 spooled"


class LinkMonitor:
    """Thread-safe registry of `LinkState`: the links update it, the CLI and the UI poll `snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, LinkState] = {}

    def register(self, name: str, endpoint: str) -> None:
        with self._lock:
            self._states[name] = LinkState(name=name, endpoint=endpoint)

    def update(self, name: str, *, error: str | None = None, message: bool = False,
               up: bool | None = None, clients_delta: int = 0, clients: int | None = None,
               detail: str | None = None) -> None:
        """Change one link's state: ``error`` counts one error, ``message`` stamps the last message now,
        ``clients_delta`` counts a client in or out, ``clients`` sets the count."""
        with self._lock:
            state = self._states.get(name) or LinkState(name=name, endpoint="")
            changes: dict[str, object] = {}
            if error is not None:
                changes |= {"errors": state.errors + 1, "last_error": error}
            if message:
                changes["last_message"] = time.time()
            if up is not None:
                changes["up"] = up
            if clients_delta:
                changes["clients"] = max(0, state.clients + clients_delta)
            if clients is not None:
                changes["clients"] = clients
            if detail is not None:
                changes["detail"] = detail
            self._states[name] = dataclasses.replace(state, **changes)  # type: ignore[arg-type]

    def snapshot(self) -> tuple[LinkState, ...]:
        with self._lock:
            return tuple(self._states.values())

    def get(self, name: str) -> LinkState | None:
        with self._lock:
            return self._states.get(name)
