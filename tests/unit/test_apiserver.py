"""The in-memory API server's semantics, on its store: no HTTP, no threads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.apiserver import (
    BUILTIN_RESOURCES,
    PODS,
    SECRETS,
    DeleteOptions,
    StatusError,
    Store,
    Watch,
    crd_resources,
    fields_match,
    labels_match,
    merge_patch,
)

JOBS_CRD = {
    "spec": {"group": "bigmodel.dev", "scope": "Namespaced",
             "names": {"kind": "BigModelJob", "plural": "bigmodeljobs", "shortNames": ["bmj"]},
             "versions": [{"name": "v1alpha1", "served": True, "subresources": {"status": {}}},
                          {"name": "v1alpha0", "served": False}]},
}
(JOBS,) = crd_resources(JOBS_CRD)
BY_PLURAL = {resource.plural: resource for resource in BUILTIN_RESOURCES}
CONFIGMAPS, NAMESPACES = BY_PLURAL["configmaps"], BY_PLURAL["namespaces"]


def job(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"task": "digits"}}


def pod(name: str, node: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "python"}],
                                                  **({"nodeName": node} if node else {}), **spec}}


@pytest.fixture()
def store() -> Store:
    return Store([*BUILTIN_RESOURCES, JOBS])


def refused(code: int, call: Any, *args: Any, **kwargs: Any) -> StatusError:
    with pytest.raises(StatusError) as error:
        call(*args, **kwargs)
    assert error.value.code == code, error.value.message
    assert error.value.status()["kind"] == "Status" and error.value.status()["code"] == code
    return error.value


async def drain(watch: Watch) -> list[tuple[str, str]]:
    """The events queued so far, as (type, name)."""
    events = []
    while (event := await watch.next(asyncio.get_running_loop().time())) is not None:
        events.append((event["type"], event["object"]["metadata"].get("name", event["object"].get("reason"))))
    return events


def test_a_crd_serves_its_served_versions_with_their_subresources() -> None:
    assert (JOBS.api_version, JOBS.kind, JOBS.namespaced, JOBS.status) == ("bigmodel.dev/v1alpha1", "BigModelJob",
                                                                           True, True)
    assert JOBS.short_names == ("bmj",) and JOBS.qualified == "bigmodeljobs.bigmodel.dev"


def test_create_fills_in_the_server_metadata(store: Store) -> None:
    created = store.create(JOBS, "default", {**job("a"), "status": {"phase": "Forged"},
                                             "metadata": {"name": "a", "uid": "mine", "resourceVersion": "99"}})
    metadata = created["metadata"]
    assert created["apiVersion"] == "bigmodel.dev/v1alpha1" and created["kind"] == "BigModelJob"
    assert metadata["namespace"] == "default" and metadata["generation"] == 1 and metadata["creationTimestamp"]
    assert metadata["uid"] != "mine" and metadata["resourceVersion"] == store.resource_version == "1"
    assert "status" not in created  # the status subresource: only /status writes it
    assert store.get(JOBS, "default", "a") is created

    assert refused(409, store.create, JOBS, "default", job("a")).reason == "AlreadyExists"
    refused(400, store.create, JOBS, "default", {"metadata": {"name": "b", "namespace": "other"}})
    refused(422, store.create, JOBS, "default", {"metadata": {}})
    refused(404, store.create, JOBS, None, job("c"))  # a namespaced resource needs a namespace


def test_a_secrets_string_data_is_merged_into_data_and_not_stored(store: Store) -> None:
    created = store.create(SECRETS, "default", {"metadata": {"name": "hf"}, "data": {"user": "bWU=", "token": "b2xk"},
                                                "stringData": {"token": "s3cret"}})
    assert created["data"] == {"user": "bWU=", "token": "czNjcmV0"}  # stringData wins, base64-encoded
    assert "stringData" not in created and "stringData" not in store.get(SECRETS, "default", "hf")

    patched = store.patch(SECRETS, "default", "hf", {"stringData": {"extra": "x"}})
    assert patched["data"] == {"user": "bWU=", "token": "czNjcmV0", "extra": "eA=="} and "stringData" not in patched
    unchanged = store.patch(SECRETS, "default", "hf", {"stringData": {"extra": "x"}})
    assert unchanged["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]


def test_generate_name_makes_unique_names(store: Store) -> None:
    names = {store.create(CONFIGMAPS, "default", {"metadata": {"generateName": "ev-"}})["metadata"]["name"]
             for _ in range(20)}
    assert len(names) == 20 and all(name.startswith("ev-") and len(name) == 8 for name in names)


def test_cluster_scoped_objects_have_no_namespace(store: Store) -> None:
    created = store.create(NAMESPACES, None, {"metadata": {"name": "ns", "namespace": "ignored"}})
    assert "namespace" not in created["metadata"]
    refused(404, store.list, NAMESPACES, "default")
    assert [ns["metadata"]["name"] for ns in store.list(NAMESPACES)] == ["ns"]


def test_get_of_a_missing_object_is_a_404_status(store: Store) -> None:
    error = refused(404, store.get, JOBS, "default", "nope")
    assert error.status() == {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                              "message": 'bigmodeljobs.bigmodel.dev "nope" not found', "reason": "NotFound",
                              "code": 404}
    refused(404, store.resource, "bigmodel.dev", "v1alpha1", "widgets")


def test_list_by_namespace_and_selectors(store: Store) -> None:
    store.create(JOBS, "default", job("a", team="x", tier="gold"))
    store.create(JOBS, "default", job("b", team="y"))
    store.create(JOBS, "other", job("c"))

    def names(namespace: str | None = "default", **selectors: str) -> list[str]:
        return [obj["metadata"]["name"] for obj in store.list(JOBS, namespace, **selectors)]

    assert names() == ["a", "b"] and names(None) == ["a", "b", "c"]
    assert names(label_selector="team=x") == ["a"]
    assert names(label_selector="team!=x") == ["b"]
    assert names(None, label_selector="team in (x, y),!tier") == ["b"]
    assert names(None, label_selector="team") == ["a", "b"]
    assert names(None, label_selector="team notin (x)") == ["b", "c"]
    assert names(None, field_selector="metadata.namespace=other") == ["c"]
    assert names(None, field_selector="metadata.name!=a,spec.task==digits") == ["b", "c"]
    refused(400, store.list, JOBS, "nowhere", label_selector="team=(x")  # even with nothing to match

    # Relabelled and deleted objects leave the label index too.
    store.patch(JOBS, "default", "b", {"metadata": {"labels": {"team": "x"}}})
    assert names(label_selector="team=x") == ["a", "b"] and names(label_selector="team==y") == []
    store.delete(JOBS, "default", "a")
    assert names(label_selector="team=x,tier!=silver") == ["b"]


def test_selector_functions() -> None:
    assert labels_match({"a": "1"}, "a=1,b!=2") and not labels_match({"a": "1"}, "a in (2,3)")
    assert fields_match({"status": {"phase": "Running"}}, "status.phase=Running")
    assert fields_match({}, "status.phase=") and not fields_match({}, "status.phase!=")


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}
    patch = {"a": "z", "c": {"f": None, "n": {"x": None}}, "l": [3]}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e", "n": {}}, "l": [3]}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]}  # not changed in place


def test_patches_bump_resource_version_and_generation_only_for_changes(store: Store) -> None:
    created = store.create(JOBS, "default", job("a"))
    labelled = store.patch(JOBS, "default", "a", {"metadata": {"labels": {"x": "1"}, "uid": "forged"}})
    assert labelled["metadata"]["generation"] == 1 and labelled["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(labelled["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert created["metadata"].get("labels") is None  # the stored object handed out before did not change

    same = store.patch(JOBS, "default", "a", {"spec": {"task": "digits"}})
    assert same is labelled  # a no-op: nothing stored
    respecced = store.patch(JOBS, "default", "a", {"spec": {"task": "gpt"}})
    assert respecced["metadata"]["generation"] == 2
    json_patched = store.patch(JOBS, "default", "a", [{"op": "replace", "path": "/spec/task", "value": "digits"}],
                               json_patch=True)
    assert json_patched["metadata"]["generation"] == 3
    emptied = store.patch(JOBS, "default", "a", {"metadata": {"labels": {"x": None}}})
    assert "labels" not in emptied["metadata"]  # omitted when empty, as a real server does


def test_a_failed_json_patch_test_is_422(store: Store) -> None:
    created = store.create(JOBS, "default", job("a"))
    store.patch(JOBS, "default", "a", {"metadata": {"labels": {"x": "1"}}})
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": created["metadata"]["resourceVersion"]},
             {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    assert refused(422, store.patch, JOBS, "default", "a", stale, json_patch=True).reason == "Invalid"
    refused(422, store.patch, JOBS, "default", "a", [{"op": "remove", "path": "/spec/absent"}], json_patch=True)
    refused(400, store.patch, JOBS, "default", "a", {"not": "a list"}, json_patch=True)
    assert "finalizers" not in store.get(JOBS, "default", "a")["metadata"]


def test_the_status_subresource_is_isolated(store: Store) -> None:
    store.create(JOBS, "default", job("a"))
    store.patch(JOBS, "default", "a", {"spec": {"task": "gpt"}, "status": {"phase": "Kept"}}, subresource="status")
    store.patch(JOBS, "default", "a", {"status": {"phase": "Ignored"}})
    body = store.get(JOBS, "default", "a")
    assert body["spec"] == {"task": "digits"} and body["status"] == {"phase": "Kept"}
    assert body["metadata"]["generation"] == 1  # status changes do not count
    replaced = store.replace(JOBS, "default", "a", {"metadata": {"name": "a"}, "spec": {"task": "x"}})
    assert replaced["status"] == {"phase": "Kept"}

    store.create(CONFIGMAPS, "default", {"metadata": {"name": "c"}, "status": {"any": "field"}})
    assert store.patch(CONFIGMAPS, "default", "c", {"status": {"any": "other"}})["status"] == {"any": "other"}


def test_put_replaces_and_conflicts_on_a_stale_resource_version(store: Store) -> None:
    created = store.create(JOBS, "default", job("a", team="x"))
    replaced = store.replace(JOBS, "default", "a", {**created, "spec": {"task": "gpt"},
                                                    "metadata": {**created["metadata"], "labels": {}}})
    assert replaced["spec"] == {"task": "gpt"} and "labels" not in replaced["metadata"]
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"] and replaced["metadata"]["generation"] == 2

    conflict = refused(409, store.replace, JOBS, "default", "a", created)
    assert conflict.reason == "Conflict" and "the object has been modified" in conflict.message
    refused(409, store.patch, JOBS, "default", "a", {"metadata": {"resourceVersion": "1"}, "spec": {"x": 1}})
    unconditional = store.replace(JOBS, "default", "a", {"metadata": {"name": "a"}, "spec": {"task": "y"}})
    assert unconditional["spec"] == {"task": "y"}
    refused(404, store.replace, JOBS, "default", "missing", job("missing"))


async def test_finalizers_hold_a_deleted_object_until_emptied(store: Store) -> None:
    store.create(JOBS, "default", {**job("a"), "metadata": {"name": "a", "finalizers": ["f"]}})
    watch = store.watch(JOBS, "default", store.resource_version)
    marked = store.delete(JOBS, "default", "a")
    assert marked["metadata"]["deletionTimestamp"] and store.delete(JOBS, "default", "a") is marked
    store.patch(JOBS, "default", "a", {"metadata": {"deletionTimestamp": None, "labels": {"x": "1"}}})
    assert store.get(JOBS, "default", "a")["metadata"]["deletionTimestamp"]  # the server's field: kept
    released = store.patch(JOBS, "default", "a", {"metadata": {"finalizers": None}})
    assert released["metadata"]["resourceVersion"] == store.resource_version
    refused(404, store.get, JOBS, "default", "a")
    refused(404, store.delete, JOBS, "default", "a")
    assert await drain(watch) == [("MODIFIED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_garbage_collection_deletes_what_lost_all_its_owners(store: Store) -> None:
    owner = store.create(JOBS, "default", job("owner"))
    other = store.create(JOBS, "default", {**job("other"), "metadata": {"name": "other", "finalizers": ["f"]}})

    def owned(name: str, *owners: dict[str, Any], **metadata: Any) -> None:
        refs = [{"apiVersion": JOBS.api_version, "kind": JOBS.kind, "name": o["metadata"]["name"],
                 "uid": o["metadata"]["uid"]} for o in owners]
        store.create(CONFIGMAPS, "default", {"metadata": {"name": name, "ownerReferences": refs, **metadata}})

    owned("owned", owner)
    owned("kept", owner, finalizers=["test/keep"])
    owned("shared", owner, other)
    owned("orphan-of-terminating", other)
    store.delete(JOBS, "default", "owner")
    store.delete(JOBS, "default", "other")  # it has a finalizer: still there, so its dependents stay
    store.collect_garbage()
    left = {cm["metadata"]["name"]: cm["metadata"] for cm in store.list(CONFIGMAPS, "default")}
    assert set(left) == {"kept", "shared", "orphan-of-terminating"}
    assert left["kept"]["deletionTimestamp"] and left["kept"]["finalizers"] == ["test/keep"]
    store.patch(JOBS, "default", "other", {"metadata": {"finalizers": []}})
    store.collect_garbage()
    assert [cm["metadata"]["name"] for cm in store.list(CONFIGMAPS, "default")] == ["kept"]


async def test_a_watch_from_now_starts_with_the_current_objects(store: Store) -> None:
    store.create(JOBS, "default", job("a"))
    store.create(JOBS, "other", job("elsewhere"))
    with store.watch(JOBS, "default") as watch:
        store.create(JOBS, "default", job("b"))
        store.create(JOBS, "other", job("not-here"))
        store.delete(JOBS, "default", "a")
        assert await drain(watch) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    store.create(JOBS, "default", job("after-the-watch-closed"))
    assert await drain(watch) == []


async def test_a_watch_resumes_after_a_resource_version(store: Store) -> None:
    store.create(JOBS, "default", job("a"))
    store.create(JOBS, "default", job("b"))
    listed_at = store.resource_version
    store.patch(JOBS, "default", "b", {"spec": {"task": "gpt"}})
    store.delete(JOBS, "default", "a")
    store.create(JOBS, "default", job("c"))
    # Only what changed since the list: unchanged objects are not replayed, a deletion is.
    watch = store.watch(JOBS, "default", listed_at)
    assert await drain(watch) == [("MODIFIED", "b"), ("DELETED", "a"), ("ADDED", "c")]
    assert await drain(store.watch(JOBS, "default", store.resource_version)) == []
    refused(400, store.watch, JOBS, "default", "yesterday")


async def test_a_watch_too_far_behind_gets_410_expired(store: Store) -> None:
    small = Store([JOBS], history=2)
    for name in "abc":
        small.create(JOBS, "default", job(name))
    assert await drain(small.watch(JOBS, "default", "1")) == [("ADDED", "b"), ("ADDED", "c")]  # 2..3 are kept
    small.create(JOBS, "default", job("d"))  # now only 3..4 are kept
    assert len(await drain(small.watch(JOBS, "default", "0"))) == 4  # "0": from now, never too old
    too_old = small.watch(JOBS, "default", "1")
    event = await too_old.next()
    assert event is not None and event["type"] == "ERROR" and event["object"]["code"] == 410
    assert await too_old.next() is None


async def test_a_watch_turns_selector_transitions_into_added_and_deleted(store: Store) -> None:
    store.create(JOBS, "default", job("a", team="x"))
    watch = store.watch(JOBS, "default", store.resource_version, label_selector="team=y")
    store.patch(JOBS, "default", "a", {"metadata": {"labels": {"team": "y"}}})
    store.patch(JOBS, "default", "a", {"spec": {"task": "gpt"}})
    store.patch(JOBS, "default", "a", {"metadata": {"labels": {"team": "z"}}})
    store.patch(JOBS, "default", "a", {"spec": {"task": "digits"}})
    assert await drain(watch) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_closing_the_store_ends_every_watch(store: Store) -> None:
    watch = store.watch(JOBS)
    store.close()
    assert await asyncio.wait_for(watch.next(), 1) is None


async def test_a_bound_pod_is_terminating_until_its_kubelet_finishes_it(store: Store) -> None:
    store.create(PODS, "default", pod("p"))
    bound = store.bind("default", "p", "node-a")
    assert bound["spec"]["nodeName"] == "node-a" and bound["metadata"]["generation"] == 1
    assert [c["type"] for c in bound["status"]["conditions"]] == ["PodScheduled"]
    watch = store.watch(PODS, "default", store.resource_version)

    terminating = store.delete(PODS, "default", "p")
    metadata = terminating["metadata"]
    assert metadata["deletionGracePeriodSeconds"] == 30 and metadata["deletionTimestamp"] > bound["status"][
        "conditions"][0]["lastTransitionTime"]  # now + the grace period
    assert metadata["generation"] == 2 and store.get(PODS, "default", "p") is terminating
    assert store.delete(PODS, "default", "p") is terminating  # no shorter grace period: nothing changes
    assert store.delete(PODS, "default", "p", DeleteOptions(grace_period_seconds=40)) is terminating
    shortened = store.delete(PODS, "default", "p", DeleteOptions(grace_period_seconds=10))
    assert shortened["metadata"]["deletionGracePeriodSeconds"] == 10
    assert shortened["metadata"]["deletionTimestamp"] < metadata["deletionTimestamp"]
    assert refused(409, store.create, PODS, "default", pod("p")).reason == "AlreadyExists"  # the name is still taken
    store.patch(PODS, "default", "p", {"status": {"phase": "Running"}}, subresource="status")  # its kubelet reports

    store.finish_termination("default", "p")
    refused(404, store.get, PODS, "default", "p")
    assert await drain(watch) == [("MODIFIED", "p"), ("MODIFIED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    store.create(PODS, "default", pod("p"))
    with pytest.raises(ValueError, match="not terminating"):
        store.finish_termination("default", "p")


def test_the_grace_period_comes_from_the_delete_then_the_pod(store: Store) -> None:
    store.create(PODS, "default", pod("own", "node-a", terminationGracePeriodSeconds=5))
    store.create(PODS, "default", pod("asked", "node-a", terminationGracePeriodSeconds=5))
    assert store.delete(PODS, "default", "own")["metadata"]["deletionGracePeriodSeconds"] == 5
    asked = store.delete(PODS, "default", "asked", DeleteOptions(grace_period_seconds=7))
    assert asked["metadata"]["deletionGracePeriodSeconds"] == 7
    assert DeleteOptions.parse({}, {"gracePeriodSeconds": "-3"}) == DeleteOptions(grace_period_seconds=1)
    assert DeleteOptions.parse({"gracePeriodSeconds": 0, "preconditions": {"uid": "u"}}, {}) == DeleteOptions(0, "u")
    refused(400, DeleteOptions.parse, {"gracePeriodSeconds": "soon"}, {})
    refused(400, DeleteOptions.parse, ["not", "options"], {})


def test_pods_that_no_kubelet_runs_go_at_once(store: Store) -> None:
    store.create(PODS, "default", pod("unbound"))
    store.create(PODS, "default", pod("done", "node-a"))
    store.patch(PODS, "default", "done", {"status": {"phase": "Succeeded"}}, subresource="status")
    store.create(PODS, "default", pod("forced", "node-a"))
    for name, options in (("unbound", DeleteOptions()), ("done", DeleteOptions()),
                          ("forced", DeleteOptions(grace_period_seconds=0))):
        store.delete(PODS, "default", name, options)
        refused(404, store.get, PODS, "default", name)


def test_finalizers_and_grace_periods_both_hold_a_pod(store: Store) -> None:
    store.create(PODS, "default", {**pod("p", "node-a"), "metadata": {"name": "p", "finalizers": ["f"]}})
    store.delete(PODS, "default", "p")
    store.patch(PODS, "default", "p", {"metadata": {"finalizers": None}})
    assert store.get(PODS, "default", "p")["metadata"]["deletionGracePeriodSeconds"] == 30  # the grace period runs
    store.patch(PODS, "default", "p", {"metadata": {"finalizers": ["f"]}})
    store.finish_termination("default", "p")
    assert store.get(PODS, "default", "p")["metadata"]["deletionGracePeriodSeconds"] == 0  # the finalizer holds it
    store.patch(PODS, "default", "p", {"metadata": {"finalizers": None}})
    refused(404, store.get, PODS, "default", "p")

    store.create(JOBS, "default", {**job("j"), "metadata": {"name": "j", "finalizers": ["f"]}})
    marked = store.delete(JOBS, "default", "j")["metadata"]
    assert marked["deletionGracePeriodSeconds"] == 0 and marked["generation"] == 2


def test_a_pod_is_bound_once_and_its_spec_is_frozen(store: Store) -> None:
    store.create(PODS, "default", pod("p", tolerations=[]))
    store.bind("default", "p", "node-a")
    bound_twice = refused(409, store.bind, "default", "p", "node-b")
    assert bound_twice.message == ('Operation cannot be fulfilled on pods/binding "p": pod p is already assigned to '
                                   'node "node-a"')
    forbidden = refused(422, store.patch, PODS, "default", "p", {"spec": {"nodeName": "node-b"}})
    assert forbidden.message.startswith('Pod "p" is invalid: spec: Forbidden: pod updates may not change fields')
    assert forbidden.status()["details"]["causes"][0]["field"] == "spec"
    patched = store.patch(PODS, "default", "p", [{"op": "replace", "path": "/spec/containers/0/image",
                                                  "value": "python:3.12"}, {"op": "add", "path": "/spec/tolerations/-",
                                                                            "value": {"operator": "Exists"}}],
                          json_patch=True)
    assert patched["spec"]["containers"][0]["image"] == "python:3.12"

    store.create(PODS, "default", pod("going", "node-a"))
    store.delete(PODS, "default", "going")
    store.create(PODS, "default", {**pod("unbound"), "metadata": {"name": "unbound", "finalizers": ["f"]}})
    store.delete(PODS, "default", "unbound")
    assert "being deleted" in refused(409, store.bind, "default", "unbound", "node-a").message


def test_delete_preconditions_must_hold(store: Store) -> None:
    created = store.create(JOBS, "default", job("a"))
    store.patch(JOBS, "default", "a", {"metadata": {"labels": {"x": "1"}}})
    stale = refused(409, store.delete, JOBS, "default", "a",
                    DeleteOptions(resource_version=created["metadata"]["resourceVersion"]))
    assert stale.message.startswith('Operation cannot be fulfilled on BigModelJob.bigmodel.dev "a": the '
                                    "ResourceVersion in the precondition (1) does not match")
    other = refused(409, store.delete, JOBS, "default", "a", DeleteOptions(uid="someone-else"))
    assert "The object might have been deleted and then recreated" in other.message
    store.delete(JOBS, "default", "a", DeleteOptions(uid=created["metadata"]["uid"],
                                                      resource_version=store.resource_version))
    refused(404, store.get, JOBS, "default", "a")


def test_collected_pods_terminate_like_deleted_ones(store: Store) -> None:
    owner = store.create(JOBS, "default", job("owner"))
    reference = {"apiVersion": JOBS.api_version, "kind": JOBS.kind, "name": "owner", "uid": owner["metadata"]["uid"]}
    for name, node in (("bound", "node-a"), ("unbound", None)):
        store.create(PODS, "default", {**pod(name, node), "metadata": {"name": name, "ownerReferences": [reference]}})
    store.delete(JOBS, "default", "owner")
    store.collect_garbage()
    assert [p["metadata"]["name"] for p in store.list(PODS, "default")] == ["bound"]
    assert store.get(PODS, "default", "bound")["metadata"]["deletionGracePeriodSeconds"] == 30
    store.collect_garbage()  # a Terminating dependent is not deleted again
    store.finish_termination("default", "bound")
    assert store.list(PODS, "default") == []
