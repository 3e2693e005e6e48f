"""Reading a custom resource's status from the emulator, and waiting (bounded) for it to say something."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.emulator import KubeClient, wait_for

Resource = tuple[str, str]
"""(apiVersion, plural)"""


async def status_of(kube: KubeClient, resource: Resource, name: str) -> dict[str, Any]:
    found = await kube.get(*resource, name)
    return (found or {}).get("status") or {}


async def wait_status_of(
    kube: KubeClient, resource: Resource, name: str, check: Callable[[dict[str, Any]], Any], message: str, timeout: float
) -> dict[str, Any]:
    """The status once check(status) is true; fails with `message` after `timeout` seconds."""

    async def probe() -> dict[str, Any] | None:
        current = await status_of(kube, resource, name)
        return current if check(current) else None

    return await wait_for(probe, timeout, message)


async def wait_events_of(kube: KubeClient, name: str, reasons: tuple[str, ...], timeout: float) -> list[str]:
    """The reasons of the object's Events once all of `reasons` are among them (Kopf posts from its own queue)."""

    async def posted() -> list[str] | None:
        found = [event["reason"] for event in await kube.events(involved_name=name)]
        return found if set(reasons) <= set(found) else None

    return await wait_for(posted, timeout, f"the Events {list(reasons)} were not all posted for {name}")
