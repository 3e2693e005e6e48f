"""The operator's object cache: newer versions win from any source, deletions stay deleted, listings replace."""

from __future__ import annotations

from typing import Any

from bigmodel.api import wire
from bigmodel.controller.cache import TOMBSTONE_S, ObjectCache, newer

SELECTOR = {wire.MANAGED_BY_LABEL: wire.OPERATOR_NAME}


def pod(name: str, version: int | str, job: str = "demo", namespace: str = "default", **labels: str) -> dict[str, Any]:
    own = SELECTOR | {wire.JOB_LABEL: job} | labels
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version), "labels": own}}


def cache(clock: list[float] | None = None) -> ObjectCache:
    now = clock if clock is not None else [0.0]
    return ObjectCache(SELECTOR, wire.OWNER_LABEL.values(), clock=lambda: now[0])


def names(found: list[dict[str, Any]] | None) -> list[str] | None:
    return None if found is None else [obj["metadata"]["name"] for obj in found]


def version(objects: ObjectCache, name: str) -> str | None:
    found = objects.get("default", name)
    return None if found is None else found["metadata"]["resourceVersion"]


def test_resource_versions_compare_as_integers_when_they_are_and_by_difference_otherwise() -> None:
    assert newer("10", "9") and not newer("9", "10") and not newer("10", "10")
    assert newer("b", "a") and newer("a", "b") and not newer("a", "a")
    assert newer("1", None) and not newer(None, "1")


def test_an_older_event_never_replaces_a_newer_write() -> None:
    objects = cache()
    assert objects.put(pod("p", 12))  # the answer to our own PATCH
    assert not objects.put(pod("p", 11))  # the watch catching up
    assert not objects.put(pod("p", 12))  # and then our write's own event: an echo, no change
    assert version(objects, "p") == "12"
    assert objects.put(pod("p", 13))
    assert version(objects, "p") == "13"


def test_a_deleted_object_stays_deleted_until_it_is_made_again() -> None:
    objects = cache()
    objects.put(pod("p", 5))
    assert objects.remove(pod("p", 7))
    assert not objects.put(pod("p", 6)), "a late answer to an older write brought a deleted pod back"
    assert objects.get("default", "p") is None
    assert objects.put(pod("p", 9)), "a pod made again under the same name is a new object"
    assert not objects.remove(pod("p", 8)), "an old deletion removed the pod made again"
    assert version(objects, "p") == "9"


def test_tombstones_are_forgotten_after_a_while() -> None:
    clock = [0.0]
    objects = cache(clock)
    objects.put(pod("p", 5))
    objects.remove(pod("p", 7))
    clock[0] = TOMBSTONE_S + 1
    objects.remove(pod("q", 8))  # a sweep happens on a later deletion
    assert objects.put(pod("p", 6))


def test_selection_by_owner_label_and_namespace() -> None:
    objects = cache()
    objects.put(pod("demo-head", 1))
    objects.put(pod("demo-w0", 2, role="worker"))
    objects.put(pod("other-head", 3, job="other"))
    objects.put(pod("demo-head", 4, namespace="team"))
    wanted = SELECTOR | {wire.JOB_LABEL: "demo"}
    assert names(objects.select("default", wanted)) == ["demo-head", "demo-w0"]
    assert names(objects.select("default", wanted | {"role": "worker"})) == ["demo-w0"]
    assert names(objects.select("team", wanted)) == ["demo-head"]
    assert names(objects.select("default", {wire.JOB_LABEL: "demo"})) is None, "objects without our label are not kept"
    assert names(objects.select("default", SELECTOR)) is None, "not by an indexed label: the cache cannot tell"


def test_a_relabelled_object_moves_in_the_index_and_one_without_our_label_leaves() -> None:
    objects = cache()
    objects.put(pod("p", 1))
    objects.put(pod("p", 2, job="other"))
    assert names(objects.select("default", SELECTOR | {wire.JOB_LABEL: "demo"})) == []
    assert names(objects.select("default", SELECTOR | {wire.JOB_LABEL: "other"})) == ["p"]
    stripped = pod("p", 3)
    stripped["metadata"]["labels"] = {}
    assert objects.put(stripped)
    assert objects.get("default", "p") is None and len(objects) == 0


def test_a_listing_replaces_its_namespace_but_keeps_writes_newer_than_itself() -> None:
    objects = cache()
    objects.put(pod("gone", 3))
    objects.put(pod("kept", 4))
    objects.put(pod("written-after-the-list", 12))
    objects.put(pod("elsewhere", 5, namespace="team"))
    assert not objects.covers("default")
    changed = objects.replace("default", [pod("kept", 4), pod("new", 9)], "10")
    assert sorted(obj["metadata"]["name"] for obj in changed) == ["gone", "new"]
    assert names(objects.select("default", SELECTOR | {wire.JOB_LABEL: "demo"})) == [
        "kept",
        "new",
        "written-after-the-list",
    ]
    assert objects.get("team", "elsewhere") is not None, "another namespace's listing is not this one's"
    assert objects.covers("default") and not objects.covers("team")
    assert not objects.put(pod("gone", 2)), "a listing's deletions leave tombstones too"


def test_a_listing_of_all_namespaces_covers_them_all() -> None:
    objects = cache()
    objects.put(pod("stale", 1, namespace="team"))
    objects.replace(None, [pod("p", 2)], "5")
    assert objects.covers("anywhere") and objects.get("team", "stale") is None


def test_the_servers_field_managers_are_not_kept() -> None:
    objects = cache()
    managed = pod("p", 1)
    managed["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    objects.put(managed)
    kept = objects.get("default", "p")
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert "managedFields" in managed["metadata"], "the object handed in is not changed"
