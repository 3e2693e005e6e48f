"""The informer's list+watch loop against a scripted API: resume, relist on 410, back off on failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bigmodel.api import wire
from bigmodel.controller import informer
from bigmodel.controller.cache import ObjectCache
from bigmodel.controller.informer import SELECTOR, Informer
from bigmodel.controller.kube import PODS, KubeError, Resource
from tests.unit.test_cache import SELECTOR as CACHE_SELECTOR
from tests.unit.test_cache import names, pod

Event = dict[str, Any]


@dataclass
class ScriptedApi:
    """Answers the informer's lists and watches from scripts, recording what it was asked; `done` once the script
    is over for all `scopes` (namespaces) it watches."""

    listings: list[tuple[list[dict[str, Any]], str]]
    watches: list[list[Event] | Exception]
    scopes: int = 1
    asked: list[tuple[str, str | None, str]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    idle: int = 0

    async def list_collection(
        self, resource: Resource, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        assert selector == SELECTOR
        items, version = self.listings.pop(0)
        self.asked.append(("list", namespace, version))
        return items, version

    async def watch(
        self, resource: Resource, namespace: str | None, selector: str, since: str, timeout_s: int
    ) -> AsyncIterator[Event]:
        assert selector == SELECTOR
        self.asked.append(("watch", namespace, since))
        if not self.watches:
            self.idle += 1
            if self.idle == self.scopes:
                self.done.set()
            await asyncio.Event().wait()  # the script is over: a watch with nothing to say
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        for event in step:
            yield event


async def follow(api: ScriptedApi, namespaces: list[str] | None = None) -> tuple[ObjectCache, list[str]]:
    """Run an informer over the script until the script is over; the cache and the changes it reported."""
    objects = ObjectCache(CACHE_SELECTOR, wire.OWNER_LABEL.values())
    changes: list[str] = []
    # The script stands in for the KubeClient: the informer calls list_collection and watch only.
    watcher = Informer(api, PODS, objects, namespaces or [], lambda obj: changes.append(obj["metadata"]["name"]))  # type: ignore[arg-type]
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(api.done.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return objects, changes


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer, "FIRST_BACKOFF_S", 0.001)


def demo(objects: ObjectCache, namespace: str = "default") -> list[str] | None:
    return names(objects.select(namespace, CACHE_SELECTOR | {wire.JOB_LABEL: "demo"}))


async def test_lists_then_watches_from_the_listing_and_resumes_from_the_last_event() -> None:
    api = ScriptedApi(
        listings=[([pod("a", 3)], "5")],
        watches=[
            [{"type": "ADDED", "object": pod("b", 6)}, {"type": "MODIFIED", "object": pod("a", 7)}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}],
            [{"type": "DELETED", "object": pod("a", 10)}],
        ],
    )
    objects, changes = await follow(api)
    assert api.asked == [("list", None, "5"), ("watch", None, "5"), ("watch", None, "7"), ("watch", None, "9"),
                         ("watch", None, "10")]  # fmt: skip
    assert demo(objects) == ["b"] and objects.covers("any namespace")
    assert changes == ["a", "b", "a", "a"]


async def test_an_expired_watch_lists_again() -> None:
    expired = KubeError(410, "WATCH", "/api/v1/pods", "too old resource version: 5 (8)")
    api = ScriptedApi(
        listings=[([pod("a", 3), pod("b", 4)], "5"), ([pod("b", 4), pod("c", 11)], "12")],
        watches=[expired],
    )
    objects, changes = await follow(api, ["default"])
    assert api.asked == [("list", "default", "5"), ("watch", "default", "5"), ("list", "default", "12"),
                         ("watch", "default", "12")]  # fmt: skip
    assert demo(objects) == ["b", "c"]
    assert sorted(changes) == ["a", "a", "b", "c"], "what the relist changed wakes its owners too"


async def test_a_failed_watch_backs_off_and_resumes_where_it_was() -> None:
    api = ScriptedApi(
        listings=[([], "5")],
        watches=[
            [{"type": "ADDED", "object": pod("a", 6)}],
            aiohttp.ClientConnectionError("connection reset"),
            KubeError(500, "WATCH", "/api/v1/pods", "etcd is away"),
            [{"type": "MODIFIED", "object": pod("a", 8)}],
        ],
    )
    objects, _ = await follow(api)
    assert [step for step in api.asked if step[0] == "list"] == [("list", None, "5")], "a failure is no reason to list"
    assert [since for verb, _, since in api.asked if verb == "watch"] == ["5", "6", "6", "6", "8"]
    found = objects.get("default", "a")
    assert found is not None and found["metadata"]["resourceVersion"] == "8"


async def test_one_watch_per_namespace() -> None:
    api = ScriptedApi(listings=[([pod("a", 1)], "2"), ([pod("a", 3, namespace="team")], "4")], watches=[], scopes=2)
    objects, _ = await follow(api, ["default", "team"])
    assert demo(objects) == ["a"] and demo(objects, "team") == ["a"]
    assert objects.covers("default") and objects.covers("team") and not objects.covers("kube-system")
