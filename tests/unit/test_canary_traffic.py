"""Canary traffic at the Serve proxies without Ray: the exact share a proxy sends the canary, what each version's
answers add up to across proxies, the operator's endpoint on the guard, and proxies kept in step through one store
(an in-memory stand-in for the cluster's key-value store, at traffic_store.TrafficStore)."""

from __future__ import annotations

import json
import math
from typing import Any

from bigmodel.api.traffic import ArmOutcomes, CanaryShare, ProxyReport, TrafficReport, TrafficSetting
from bigmodel.api.wire import CANARY_ROUTE_PREFIX, TRAFFIC_PATH
from bigmodel.runtime.serving.asgi_guard import at_root
from bigmodel.runtime.serving.canary_split import CanarySplit
from bigmodel.runtime.serving.proxy_guard import ProxyGuard, TrafficDesk
from bigmodel.runtime.serving.traffic_store import FORGET_AFTER_S, TrafficSync
from tests.unit.test_serving_guard import Client, Message, run

TOKEN = b"cluster-token"


def share(version: str, percent: int) -> TrafficSetting:
    return TrafficSetting(canary=CanaryShare(version=version, percent=percent))


class MemoryStore:
    """What Ray's internal key-value store keeps for the proxies: the setting, and a report per proxy."""

    def __init__(self) -> None:
        self.stored = TrafficSetting()
        self.by_proxy: dict[str, ProxyReport] = {}

    def setting(self) -> TrafficSetting:
        return self.stored

    def put_setting(self, setting: TrafficSetting) -> None:
        self.stored = setting

    def put_report(self, report: ProxyReport) -> None:
        self.by_proxy[report.proxy] = report

    def reports(self) -> list[ProxyReport]:
        return list(self.by_proxy.values())

    def forget(self, proxy: str) -> None:
        del self.by_proxy[proxy]


def test_a_proxy_sends_the_canary_exactly_its_share_spread_evenly() -> None:
    split = CanarySplit("p")
    split.apply(share("v2", 25))
    turns = [split.route("/v1/models/m:predict") for _ in range(100)]
    assert sum(turns) == 25 and turns[:8] == [False, False, False, True] * 2
    split.apply(share("v2", 10))
    assert sum(split.route("/v2/models/m/infer") for _ in range(100)) == 10
    assert not split.route(CANARY_ROUTE_PREFIX + "/v2"), "a request to the canary's route goes there as it is"
    split.apply(TrafficSetting())
    assert not any(split.route("/v2") for _ in range(100))


def test_outcomes_start_again_for_a_new_canary_version_only() -> None:
    split = CanarySplit("p")
    split.apply(share("v2", 25))
    split.record("/v1/models/m:predict", 200, 0.004)
    split.record(CANARY_ROUTE_PREFIX + "/v1/models/m:predict", 500, 0.3)
    report = split.report(1.0)
    assert (report.stable.requests, report.canary.requests, report.canary.errors) == (1, 1, 1)
    assert report.canary.percentile_ms(0.99) == 500 and report.stable.percentile_ms(0.99) == 5
    split.apply(share("v2", 50))
    assert split.report(2.0).canary.requests == 1, "a new share of the same canary keeps its record"
    split.apply(share("v3", 50))
    assert split.report(3.0).canary.requests == 0 and split.report(3.0).stable.requests == 0


def test_outcomes_add_up_across_proxies_of_the_same_canary_only() -> None:
    on, old = share("v2", 25), share("v1", 25)
    fast, slow = ArmOutcomes(), ArmOutcomes()
    for _ in range(99):
        fast.record(200, 0.003)
    slow.record(503, 90.0)
    report = TrafficReport(
        setting=on,
        proxies=[
            ProxyReport(proxy="a", at=100.0, applies=on, stable=fast, canary=slow),
            ProxyReport(proxy="b", at=100.0, applies=on, stable=slow, canary=fast),
            ProxyReport(proxy="c", at=100.0, applies=old, stable=fast, canary=fast),
        ],
    )
    stable, canary = report.outcomes("v2")
    assert (stable.requests, stable.errors, canary.requests, canary.errors) == (100, 1, 100, 1)
    assert stable.percentile_ms(0.99) == 5 and stable.percentile_ms(1.0) == math.inf
    assert ArmOutcomes().percentile_ms(0.99) is None
    assert report.lagging(on, fresh_s=10) == ["c"]
    gone = ProxyReport(proxy="d", at=50.0, applies=old)
    assert TrafficReport(setting=on, proxies=[*report.proxies, gone]).lagging(on, fresh_s=10) == ["c"]


def answering_app(status: int, seen: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def desk(store: MemoryStore | None = None, token: bytes | None = TOKEN) -> TrafficDesk:
    return TrafficDesk(CanarySplit("head/1"), store or MemoryStore(), token)


def test_the_guard_sends_the_canary_its_share_and_counts_each_versions_answers() -> None:
    seen: list[str] = []
    traffic = desk()
    traffic.split.apply(share("v2", 50))
    guard = ProxyGuard(answering_app(200, seen), 1000, 10, traffic=traffic)
    for _ in range(4):
        assert run(guard, Client([b"{}"], [], path="/v1/models/m:predict")).status() == 200
    run(guard, Client([b""], [], path="/v2/health/ready"))
    assert seen == [
        "/v1/models/m:predict",
        CANARY_ROUTE_PREFIX + "/v1/models/m:predict",
        "/v1/models/m:predict",
        CANARY_ROUTE_PREFIX + "/v1/models/m:predict",
        "/v2/health/ready",
    ], "probes are never sent to the canary nor counted"
    report = traffic.split.report(0.0)
    assert (report.stable.requests, report.canary.requests) == (2, 2)


def operator_call(guard: ProxyGuard, method: str, body: bytes = b"", token: bytes = TOKEN) -> Client:
    client = Client([body], [(b"authorization", b"Bearer " + token)], path=TRAFFIC_PATH)
    client.scope["method"] = method
    return run(guard, client)


def test_only_the_operator_sets_and_reads_the_traffic_and_every_proxy_follows_within_a_sync() -> None:
    store = MemoryStore()
    head, worker = desk(store), TrafficDesk(CanarySplit("worker/1"), store, TOKEN)
    guard = ProxyGuard(answering_app(200, []), 1000, 10, traffic=head)
    setting = share("v2", 25)
    assert operator_call(guard, "PUT", setting.model_dump_json().encode(), token=b"guess").status() == 401
    assert store.stored == TrafficSetting()
    closed = operator_call(ProxyGuard(answering_app(200, []), 1000, 10, traffic=desk(store, None)), "GET")
    assert closed.status() == 401, "a proxy without the cluster's token lets no one in"

    put = operator_call(guard, "PUT", setting.model_dump_json().encode())
    assert put.status() == 200 and store.stored == setting and head.split.setting == setting
    assert worker.split.setting == TrafficSetting(), "other proxies follow at their next sync"
    TrafficSync(worker.split, store).once()
    TrafficSync(head.split, store).once()
    assert worker.split.setting == setting
    answer = TrafficReport.model_validate(operator_call(guard, "GET").json())
    assert answer.setting == setting and sorted(r.proxy for r in answer.proxies) == ["head/1", "worker/1"]
    assert answer.lagging(setting, fresh_s=10) == []

    bad = operator_call(guard, "PUT", json.dumps({"canary": {"version": "v2", "percent": 101}}).encode())
    assert bad.status() == 400 and "100" in bad.json()["error"] and store.stored == setting
    assert operator_call(guard, "POST").status() == 405


def test_reports_of_proxies_long_gone_are_forgotten() -> None:
    store = MemoryStore()
    store.put_report(ProxyReport(proxy="gone", at=0.0))
    store.put_report(ProxyReport(proxy="here", at=FORGET_AFTER_S * 3))
    traffic = desk(store)
    guard = ProxyGuard(answering_app(200, []), 1000, 10, traffic=traffic)
    answer = TrafficReport.model_validate(operator_call(guard, "GET").json())
    assert [r.proxy for r in answer.proxies] == ["here"] and list(store.by_proxy) == ["here"]


def test_a_request_through_the_canary_route_reaches_the_app_as_at_the_root() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "path": CANARY_ROUTE_PREFIX + "/v1/completions",
        "raw_path": (CANARY_ROUTE_PREFIX + "/v1/completions").encode(),
        "root_path": CANARY_ROUTE_PREFIX,
    }
    moved = at_root(scope)
    assert (moved["path"], moved["raw_path"], moved["root_path"]) == ("/v1/completions", b"/v1/completions", "")
    plain: dict[str, Any] = {"type": "http", "path": "/v1/completions", "root_path": ""}
    assert at_root(plain) is plain


def test_a_failing_canary_is_counted_against_the_canary() -> None:
    seen: list[str] = []
    traffic = desk()
    traffic.split.apply(share("v2", 100))
    guard = ProxyGuard(answering_app(500, seen), 1000, 10, traffic=traffic)
    messages: list[Message] = run(guard, Client([b"{}"], [])).sent
    assert messages[0]["status"] == 500
    report = traffic.split.report(0.0)
    assert (report.canary.requests, report.canary.errors, report.stable.requests) == (1, 1, 0)
