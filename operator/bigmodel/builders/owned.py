"""What every object a BigModelJob or BigModelService owns carries: its owner reference, the owner's uid label, and
the spec generation it was built from."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService
from bigmodel.builders import naming

ClusterOwner = BigModelJob | BigModelService


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": wire.API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def namespace_and_uid(owner: ClusterOwner) -> tuple[str, str]:
    namespace, uid = owner.metadata.namespace, owner.metadata.uid
    if not namespace or not uid:
        # Children without an owner reference would outlive their owner; only an object read back from the API
        # server has what they need.
        raise ValueError(
            f"{owner.kind} {owner.metadata.name!r} has no namespace or uid; read it from the API server first"
        )
    return namespace, uid


def object_metadata(owner: ClusterOwner, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of a child: its owner reference and uid label, and the owner's spec generation it was built from."""
    namespace, uid = namespace_and_uid(owner)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": object_labels | {wire.OWNER_UID_LABEL: uid},
        "ownerReferences": [owner_reference(owner.kind, owner.metadata.name, uid)],
    }
    # The generation is set by the API server on every write of the spec; objects from elsewhere may lack it.
    if owner.metadata.generation is not None:
        metadata["annotations"] = {wire.SPEC_GENERATION_ANNOTATION: str(owner.metadata.generation)}
    return metadata


def cluster_pods(owner: ClusterOwner, generation: int) -> dict[str, str]:
    """The labels that pick out exactly one cluster's pods: its name, and the uid of the owner that made them."""
    _, uid = namespace_and_uid(owner)
    return naming.cluster_selector(owner.metadata.name, generation, owner.kind) | {wire.OWNER_UID_LABEL: uid}


def cluster_object_labels(owner: ClusterOwner, generation: int, component: str) -> dict[str, str]:
    """Labels of a cluster's objects other than its pods and head Service (its Secret, its NetworkPolicy)."""
    name, kind = owner.metadata.name, owner.kind
    return naming.owner_labels(name, component, kind) | {
        wire.CLUSTER_LABEL: naming.cluster_name(name, generation, kind),
        wire.GENERATION_LABEL: str(generation),
    }
