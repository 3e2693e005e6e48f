"""The fault table: which requests a rule matches, how often it applies, and the log of what it injected."""

from __future__ import annotations

import pytest

from tests.support.apiserver import ApiCall
from tests.support.faults import Fault, FaultTable


def call(
    method: str = "POST",
    verb: str = "create",
    resource: str = "pods",
    subresource: str | None = None,
    namespace: str | None = "default",
    name: str | None = "p",
) -> ApiCall:
    return ApiCall(
        method=method,
        verb=verb,
        group="",
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        user_agent="operator",
    )


def test_a_rule_matches_every_field_it_sets() -> None:
    fault = Fault(method="PATCH", plural="pods", subresource="status", namespace="default", name="p", code=409)
    assert fault.matches(call("PATCH", "patch", subresource="status"), tooling=False, open_stream=False)
    for other in (
        call("PUT", "update", subresource="status"),
        call("PATCH", "patch"),
        call("PATCH", "patch", "services", "status"),
        call("PATCH", "patch", name="q", subresource="status"),
        call("PATCH", "patch", namespace="other", subresource="status"),
    ):
        assert not fault.matches(other, tooling=False, open_stream=False), other
    assert Fault(subresource="").matches(call(), False, False)  # "": the object itself only
    assert not Fault(subresource="").matches(call(subresource="binding"), False, False)
    assert Fault(verb="list").matches(call("GET", "list", name=None), False, False)
    assert not Fault(verb="list").matches(call("GET", "watch", name=None), False, False)


def test_the_tooling_is_left_alone_unless_a_rule_says_so() -> None:
    assert not Fault(code=500).matches(call(), tooling=True, open_stream=False)
    assert Fault(code=500, tooling=True).matches(call(), tooling=True, open_stream=False)


def test_drop_watch_rules_are_for_watches_and_only_they_cut_open_streams() -> None:
    watch = call("GET", "watch", name=None)
    assert Fault(drop_watch=0).matches(watch, False, open_stream=True)
    assert not Fault(drop_watch=0).matches(call("GET", "list", name=None), False, open_stream=False)
    assert not Fault(code=500).matches(watch, False, open_stream=True)  # an error answers new requests only
    with pytest.raises(ValueError):
        Fault(code=500, drop_watch=1)
    with pytest.raises(ValueError):
        Fault(code=500, probability=1.5)


def test_times_spends_a_rule_and_the_log_records_each_hit() -> None:
    table = FaultTable()
    rule = table.add(Fault(method="POST", code=403, times=2))
    fallback = table.add(Fault(code=500))
    taken = [table.take(call(), tooling=False) for _ in range(3)]
    assert taken == [rule.fault, rule.fault, fallback.fault]  # the first live rule wins
    assert rule.hits == 2 and rule.spent and fallback.hits == 1
    assert [(entry.fault.code, entry.call.name) for entry in table.injected()] == [(403, "p"), (403, "p"), (500, "p")]
    table.remove(fallback)
    assert table.take(call(), tooling=False) is None
    table.add(Fault(code=503))
    table.clear()
    assert table.rules == [] and table.take(call(), tooling=False) is None and len(table.injected()) == 3


def test_probability_throws_repeat_with_the_seed() -> None:
    table = FaultTable()
    rule = table.add(Fault(code=500, probability=0.5))

    def throws() -> list[bool]:
        return [table.take(call(), tooling=False) is not None for _ in range(40)]

    table.seed(7)
    first = throws()
    table.seed(7)
    assert throws() == first and 5 < first.count(True) < 35 and rule.hits == 2 * first.count(True)


def test_adding_a_rule_tells_the_listeners() -> None:
    table, heard = FaultTable(), []
    table.on_add(lambda: heard.append(len(table.rules)))
    table.add(Fault(drop_watch=0))
    assert heard == [1]
