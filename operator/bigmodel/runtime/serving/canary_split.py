"""One Serve proxy's share of a canary: which of its requests go to the canary version, and what each version
answered.

A canary is a second Serve application under wire.CANARY_ROUTE_PREFIX; a request sent to it has that prefix put in
front of its path, which is all Serve's routing needs. The split is by count, not by chance: of every 100 requests a
proxy takes, the canary gets exactly `percent`, spread evenly, so that a 10% canary is 10% from the first minute.
"""

from __future__ import annotations

import threading

from bigmodel.api.traffic import ArmOutcomes, ProxyReport, TrafficSetting
from bigmodel.api.wire import CANARY_ROUTE_PREFIX


def is_canary_path(path: str) -> bool:
    return path.startswith(CANARY_ROUTE_PREFIX + "/")


class CanarySplit:
    """The setting this proxy applies and its outcomes since the canary version last changed. The proxy's event
    loop routes and records; the sync thread (traffic_store.py) applies settings and reads reports: the lock keeps
    a report whole."""

    def __init__(self, proxy: str) -> None:
        self.proxy = proxy
        self.setting = TrafficSetting()
        self._counted = 0
        self._stable = ArmOutcomes()
        self._canary = ArmOutcomes()
        self._lock = threading.Lock()

    def apply(self, setting: TrafficSetting) -> None:
        """Take a new setting; the outcomes start again when the canary version changes, so that both versions are
        compared over the same requests."""
        if setting == self.setting:
            return
        with self._lock:
            before = self.setting.canary.version if self.setting.canary else None
            after = setting.canary.version if setting.canary else None
            if before != after:
                self._stable, self._canary = ArmOutcomes(), ArmOutcomes()
            self.setting = setting
            self._counted = 0

    def route(self, path: str) -> bool:
        """Whether this request is the canary's (its turn, of a request to neither version's route in particular)."""
        canary = self.setting.canary
        if canary is None or canary.percent == 0 or is_canary_path(path):
            return False
        before, self._counted = self._counted, self._counted + 1
        return (before + 1) * canary.percent // 100 > before * canary.percent // 100

    def record(self, path: str, status: int, seconds: float) -> None:
        """One answer (its status, and the seconds until it started), counted for the version whose path it took."""
        with self._lock:
            arm = self._canary if is_canary_path(path) else self._stable
            arm.record(status, seconds)

    def report(self, now: float) -> ProxyReport:
        with self._lock:
            return ProxyReport(
                proxy=self.proxy,
                at=now,
                applies=self.setting,
                stable=self._stable.model_copy(deep=True),
                canary=self._canary.model_copy(deep=True),
            )
