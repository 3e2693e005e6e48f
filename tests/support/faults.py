"""Scripted faults for the test API server: rules that make it answer as a real one does on a bad day.

A test adds a :class:`Fault` to the server's :class:`FaultTable` (``emulator.faults``) and gets back a
:class:`FaultRule` that counts its hits::

    quota = emulator.faults.add(Fault(method="POST", plural="pods", code=403, times=2))
    ...                                    # the operator's next two pod creations are refused by the "quota"
    assert quota.hits == 2
    emulator.faults.add(Fault(plural="pods", verb="watch", drop_watch=3))   # cut pod watches after 3 events
    emulator.faults.add(Fault(method="PATCH", subresource="status", code=500, probability=0.1))  # chaos
    emulator.faults.seed(7)                # the throws of `probability` repeat from run to run
    emulator.faults.injected()             # every fault injected so far, for a chaos bench to count

A request matches a rule when every field the rule sets matches it; a rule leaves alone the requests of the test
tooling (the emulator's client, :class:`tests.support.emulator.KubeClient`, the local kubelet) unless it says
``tooling=True``. The first matching rule that is not spent and wins its throw applies; the others do not. The
server's garbage collector works on its store directly, so no fault reaches it. The server answers a fault with a
real server's ``Status`` (see ``ApiServer``); the table only decides which requests get which fault. It is
thread-safe: tests add rules from their own thread while the server reads them in its loop.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server imports this module: the request record is only named here
    from tests.support.apiserver import ApiCall


@dataclass(frozen=True)
class Fault:
    """Which requests to break (unset fields match anything) and how."""

    method: str | None = None
    """HTTP method: ``POST``, ``GET``, ``PATCH``..."""
    verb: str | None = None
    """RBAC verb, finer than the method: ``create``, ``get``, ``list``, ``watch``, ``patch``, ``update``, ``delete``."""
    plural: str | None = None
    subresource: str | None = None
    """``status`` or ``binding``; ``""``: only requests to an object or collection itself, no subresource."""
    namespace: str | None = None
    name: str | None = None
    """The object's name (for a create: the name in the body)."""
    tooling: bool = False
    """Also break the test tooling's requests."""
    code: int | None = None
    """Answer this HTTP error instead of serving the request: 403, 409, 422, 429, 500, 503..."""
    reason: str | None = None
    message: str | None = None
    """The answer's ``reason`` and ``message``; by default a real server's for the code (ApiServer's words)."""
    retry_after_s: int = 1
    """429: the ``Retry-After`` header and ``details.retryAfterSeconds``."""
    delay_s: float = 0.0
    """Answer this many seconds late (with the error, if there is one, else with the served request)."""
    drop_watch: int | None = None
    """Cut a matching watch stream after this many more events (0: at once), open ones included."""
    times: int | None = None
    """Apply this many times, then the rule is spent; None: until removed."""
    probability: float = 1.0
    """Apply to each matching request with this probability (from the table's seeded random)."""

    def __post_init__(self) -> None:
        if self.drop_watch is not None and self.code is not None:
            raise ValueError("a fault either cuts a watch stream or answers an error, not both")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} is not between 0 and 1")

    def matches(self, call: ApiCall, tooling: bool, open_stream: bool) -> bool:
        """Whether this fault is for the request `call` (or, `open_stream`, for that watch stream, already open)."""
        if (open_stream and self.drop_watch is None) or (self.drop_watch is not None and call.verb != "watch"):
            return False
        return (self.tooling or not tooling) and all(
            wanted is None or wanted == actual
            for wanted, actual in (
                (self.method, call.method),
                (self.verb, call.verb),
                (self.plural, call.resource),
                (self.subresource, call.subresource or ""),
                (self.namespace, call.namespace),
                (self.name, call.name),
            )
        )


class FaultRule:
    """A fault in the table, and how often it was applied."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.hits = 0

    @property
    def spent(self) -> bool:
        return self.fault.times is not None and self.hits >= self.fault.times

    def __repr__(self) -> str:
        return f"FaultRule({self.fault!r}, hits={self.hits})"


@dataclass(frozen=True)
class Injection:
    """One fault applied: when (``time.time()``), which, and to what request."""

    at: float
    fault: Fault
    call: ApiCall


class FaultTable:
    """The server's fault rules, in the order added, and the log of what they injected."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._log: list[Injection] = []
        self._random = random.Random(seed)
        self._listeners: list[Callable[[], None]] = []

    def add(self, fault: Fault) -> FaultRule:
        rule = FaultRule(fault)
        with self._lock:
            self._rules.append(rule)
            listeners = list(self._listeners)
        for listener in listeners:  # the server cuts the open watch streams a new drop_watch rule is for
            listener()
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule (the log stays)."""
        with self._lock:
            self._rules.clear()

    def seed(self, seed: int) -> None:
        with self._lock:
            self._random.seed(seed)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def injected(self) -> list[Injection]:
        """Every fault applied so far, in order."""
        with self._lock:
            return list(self._log)

    def on_add(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in the adding thread) after each rule added."""
        with self._lock:
            self._listeners.append(listener)

    def take(self, call: ApiCall, tooling: bool, open_stream: bool = False) -> Fault | None:
        """The fault to apply to `call` (or to that open watch stream), counted and logged; None for none."""
        with self._lock:
            for rule in self._rules:
                if (
                    not rule.spent
                    and rule.fault.matches(call, tooling, open_stream)
                    and self._random.random() < rule.fault.probability
                ):
                    rule.hits += 1
                    self._log.append(Injection(time.time(), rule.fault, call))
                    return rule.fault
        return None
