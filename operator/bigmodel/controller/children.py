"""Pods and Services of a job's or a service's clusters, deleted and created in the order every plan asks for."""

from __future__ import annotations

from typing import Any

from bigmodel.controller.kube import PODS, SERVICES, KubeClient


async def change_children(
    kube: KubeClient, namespace: str, *, delete_pods: list[str], delete_services: list[str], create: list[dict[str, Any]]
) -> None:
    """Deletions first, so a rebuilt cluster never runs next to the pods it replaces; creations tolerate repeats."""
    for pod in delete_pods:
        await kube.delete(PODS, namespace, pod)
    for service in delete_services:
        await kube.delete(SERVICES, namespace, service)
    for obj in create:
        await kube.create(SERVICES if obj["kind"] == "Service" else PODS, namespace, obj)
