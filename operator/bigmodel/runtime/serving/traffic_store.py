"""Where the Serve proxies of one cluster share canary traffic: the setting the operator gave the head's proxy, and
each proxy's report, in the cluster's Ray key-value store (the GCS, kept in Redis where the cluster is fault
tolerant).

The operator speaks to one proxy (the head's); every proxy's TrafficSync reads the setting from here and writes its
report here, every SYNC_INTERVAL_S, so a setting reaches every proxy within that time and the head's proxy can answer
for all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from pydantic import ValidationError
from ray.experimental import internal_kv

from bigmodel.api.traffic import ProxyReport, TrafficSetting
from bigmodel.runtime.serving.canary_split import CanarySplit

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 0.5
FORGET_AFTER_S = 3600.0
"""A report this old is of a proxy long gone (its node removed): it is deleted, so that reports do not pile up on a
service whose worker pods come and go."""
_NAMESPACE = "bigmodel-traffic"
_SETTING_KEY = b"setting"
_REPORT_PREFIX = b"proxy/"


class TrafficStore(Protocol):
    def setting(self) -> TrafficSetting: ...

    def put_setting(self, setting: TrafficSetting) -> None: ...

    def put_report(self, report: ProxyReport) -> None: ...

    def reports(self) -> list[ProxyReport]: ...

    def forget(self, proxy: str) -> None: ...


class RayKvStore:
    """The store in Ray's internal key-value store, which every process of the cluster reaches through the GCS.
    Blocking calls: the proxy makes them off its event loop."""

    @staticmethod
    def reachable() -> bool:
        """Whether this process is connected to a Ray cluster (a Serve proxy is)."""
        return bool(internal_kv._internal_kv_initialized())

    def setting(self) -> TrafficSetting:
        raw = internal_kv._internal_kv_get(_SETTING_KEY, namespace=_NAMESPACE)
        return TrafficSetting.model_validate_json(raw) if raw else TrafficSetting()

    def put_setting(self, setting: TrafficSetting) -> None:
        internal_kv._internal_kv_put(_SETTING_KEY, setting.model_dump_json(), namespace=_NAMESPACE)

    def put_report(self, report: ProxyReport) -> None:
        key = _REPORT_PREFIX + report.proxy.encode()
        internal_kv._internal_kv_put(key, report.model_dump_json(), namespace=_NAMESPACE)

    def reports(self) -> list[ProxyReport]:
        found = []
        for key in internal_kv._internal_kv_list(_REPORT_PREFIX, namespace=_NAMESPACE):
            raw = internal_kv._internal_kv_get(key, namespace=_NAMESPACE)
            try:
                found.append(ProxyReport.model_validate_json(raw))
            except ValidationError:
                # Written by a proxy of another version of this code; it will write again.
                continue
        return found

    def forget(self, proxy: str) -> None:
        internal_kv._internal_kv_del(_REPORT_PREFIX + proxy.encode(), namespace=_NAMESPACE)


def current_reports(store: TrafficStore) -> list[ProxyReport]:
    """Every proxy's report, those of proxies long gone deleted: gone FORGET_AFTER_S before the newest report (the
    proxies' own clocks say how old a report is)."""
    reports = []
    found = store.reports()
    newest = max((report.at for report in found), default=0.0)
    for report in found:
        if newest - report.at > FORGET_AFTER_S:
            store.forget(report.proxy)
        else:
            reports.append(report)
    return reports


class TrafficSync:
    """A daemon thread of one proxy: apply the stored setting, store this proxy's report. While the GCS does not
    answer (the head being re-created), the proxy keeps the setting it has."""

    def __init__(self, split: CanarySplit, store: TrafficStore, interval_s: float = SYNC_INTERVAL_S) -> None:
        self.split = split
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bigmodel-traffic-sync", daemon=True)

    def start(self) -> TrafficSync:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def once(self) -> None:
        self.split.apply(self.store.setting())
        self.store.put_report(self.split.report(time.time()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.once()
            except Exception as error:  # noqa: BLE001 - the GCS is away for a while: try again at the next tick
                log.debug("traffic sync: %s", error)
