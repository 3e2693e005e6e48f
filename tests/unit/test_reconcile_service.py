"""The BigModelService lifecycle as pure decisions: a service and an observation in, actions and a status out."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import pytest

from bigmodel.api.service import BigModelService, BigModelServiceSpec, BigModelServiceStatus
from bigmodel.api.wire import CLUSTER_SPEC_ANNOTATION
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.reconcile.observed import PodView, ServiceView
from bigmodel.reconcile.plans import DeployServe, Outcome
from bigmodel.reconcile.service import decide_service
from bigmodel.reconcile.service_observed import (
    ModelSourceView,
    RayClusterView,
    ServeAppView,
    ServiceObservation,
    ServingServiceView,
    SourceProblem,
)
from bigmodel.reconcile.service_pass import ServicePass, ServicePlan, cluster_digest
from bigmodel.reconcile.service_scaling import capacity_errors, scale_workers, worker_capacity, workers_for
from bigmodel.reconcile.service_upgrade import RETIRE_DELAY_S, keep_serving_cluster

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
SOURCE = ModelSourceView(uri="s3://bucket/digits/model", revision="uid:1")


def make_service(status: BigModelServiceStatus | None = None, **spec: Any) -> BigModelService:
    body = {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": "digits", "namespace": "team", "uid": "0123456789abcdef", "generation": 1},
        "spec": {
            "model": {"jobName": "digits"},
            "replicas": {"min": 1, "max": 4},
            "replicaResources": {"cpu": 1},
            "workers": {"minReplicas": 1, "maxReplicas": 3, "idleTimeoutSeconds": 60, "resources": {"cpu": "2"}},
            **spec,
        },
    }
    service = BigModelService.model_validate(body, by_alias=True)
    service.status = status
    return service


def as_pod(obj: dict[str, Any], digest: str, *, phase: str = "Running", ready: bool = True) -> PodView:
    obj["metadata"]["annotations"][CLUSTER_SPEC_ANNOTATION] = digest
    obj["status"] = {
        "phase": phase,
        "podIP": "10.0.0.7",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return PodView.from_object(obj)


def cluster_pods(service: BigModelService, generation: int = 0, workers: int = 1, **kw: Any) -> list[PodView]:
    digest = cluster_digest(service.spec, None)
    pods = [as_pod(head_pod(service, generation, None), digest, **kw)]
    return pods + [as_pod(worker_pod(service, generation, i, None), digest, **kw) for i in range(workers)]


def app(
    plan_or_config: ServicePlan | dict[str, Any], status: str = "RUNNING", replicas: tuple[str, ...] = ("RUNNING",)
) -> ServeAppView:
    config = plan_or_config if isinstance(plan_or_config, dict) else deployed(plan_or_config)[0].config
    return ServeAppView(
        status, deployed=config["applications"][0], target_replicas=len(replicas), replica_states=replicas
    )


def seen(
    pods: list[PodView],
    clusters: dict[int, RayClusterView] | None = None,
    *,
    serving: int | None = 0,
    now: datetime = NOW,
    source: ModelSourceView | SourceProblem = SOURCE,
) -> ServiceObservation:
    generations = {p.generation for p in pods}
    return ServiceObservation(
        now=now,
        source=source,
        pods=pods,
        services=[ServiceView(f"digits-s{g}-head", g) for g in generations],
        serving=ServingServiceView("digits-serve", serving) if serving is not None else None,
        ray=clusters or {},
    )


def deployed(plan: ServicePlan) -> list[DeployServe]:
    return plan.ray_calls(DeployServe)


def new_selector(plan: ServicePlan) -> dict[str, str] | None:
    """The selector the plan moves the serving Service to, if it moves it."""
    patch = plan.patch_services.get("digits-serve")
    return patch["spec"]["selector"] if patch else None


def nodes(service_pods: list[PodView]) -> frozenset[str]:
    return frozenset(p.name for p in service_pods)


def deployed_config(service: BigModelService, pods: list[PodView]) -> dict[str, Any]:
    """The config the operator deploys to a reachable cluster with no application yet."""
    plan = decide_service(service, seen(pods, {0: RayClusterView(True, None, nodes(pods))}))
    assert deployed(plan), "no Serve config was deployed"
    return deployed(plan)[0].config


def ready_status(service: BigModelService, pods: list[PodView], config: dict[str, Any]) -> BigModelServiceStatus:
    plan = decide_service(service, seen(pods, {0: RayClusterView(True, app(config), nodes(pods))}))
    assert plan.status.phase == "Ready"
    return plan.status


class ServingAtReady(NamedTuple):
    pods: list[PodView]
    config: dict[str, Any]
    ray: dict[int, RayClusterView]
    status: BigModelServiceStatus


def serving_at_ready() -> ServingAtReady:
    """Generation 0 runs its application: where every update starts."""
    service = make_service()
    pods = cluster_pods(service)
    config = deployed_config(service, pods)
    ray = {0: RayClusterView(True, app(config), nodes(pods))}
    return ServingAtReady(pods, config, ray, ready_status(service, pods, config))


def test_waits_for_the_source_job_without_building_anything() -> None:
    problem = SourceProblem("SourceJobNotFinished", "waiting for BigModelJob 'digits' (Running)")
    plan = decide_service(make_service(), seen([], serving=None, source=problem))
    assert plan.create == [] and plan.ray == []
    assert plan.status.phase == "Pending"
    loaded = next(c for c in plan.status.conditions if c.type == "ModelLoaded")
    assert (loaded.status, loaded.reason) == ("False", "SourceJobNotFinished")
    assert [e.reason for e in plan.events] == ["SourceJobNotFinished"]
    again = decide_service(make_service(plan.status), seen([], serving=None, source=problem))
    assert again.events == [], "the same wait is announced once"
    assert again.requeue_after is not None


def test_a_failed_source_job_fails_the_service() -> None:
    problem = SourceProblem("SourceJobFailed", "BigModelJob 'digits' failed; it has no model", final=True)
    plan = decide_service(make_service(), seen([], serving=None, source=problem))
    assert plan.status.phase == "Failed"
    assert plan.events[0].type == "Warning"


def test_first_pass_builds_a_cluster_and_the_serving_service() -> None:
    plan = decide_service(make_service(), seen([], serving=None))
    names = [obj["metadata"]["name"] for obj in plan.create]
    assert names == [
        "digits-s0",
        "digits-s0-ray-token",
        "digits-s0-head",
        "digits-s0-head",
        "digits-s0-w0",
        "digits-serve",
    ]
    serving = plan.create[-1]
    assert serving["spec"]["type"] == "ClusterIP"
    assert serving["spec"]["selector"]["bigmodel.dev/generation"] == "0"
    assert serving["spec"]["ports"][0]["port"] == 8000
    assert plan.status.url == "http://digits-serve.team.svc:8000"
    assert plan.status.phase == "Pending"


def test_deploys_the_app_once_the_head_answers_and_is_ready_when_it_runs() -> None:
    service = make_service()
    pods = cluster_pods(service)
    config = deployed_config(service, pods)
    application = config["applications"][0]
    assert application["args"]["model_uri"] == SOURCE.uri
    assert application["deployments"][0]["autoscaling_config"]["max_replicas"] == 4
    assert config["proxy_location"] == "EveryNode", "the head is not the only way in"

    starting = app(config, "DEPLOYING", ("STARTING",))
    deploying = decide_service(service, seen(pods, {0: RayClusterView(True, starting, nodes(pods))}))
    assert deploying.ray == [], "a config Serve already has is not deployed again"
    assert deploying.status.phase == "Deploying"

    status = ready_status(service, pods, config)
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["ModelLoaded"] == ("True", "Loaded")
    assert conditions["UpgradeInProgress"][0] == "False"
    assert status.model.source == SOURCE.uri and status.model.version == application["args"]["model_version"]
    assert status.replicas_ready == "1/1" and status.workers_ready == "1/1"


def test_replicas_that_do_not_fit_add_worker_pods_up_to_the_max() -> None:
    service = make_service()
    pods = cluster_pods(service)
    config = deployed_config(service, pods)
    replicas = ("RUNNING",) * 2 + ("STARTING",) * 5
    demand = (((("CPU", 1.0),), 5),)
    ray = RayClusterView(True, app(config, replicas=replicas), nodes(pods), nodes(pods), demand)
    plan = decide_service(service, seen(pods, {0: ray}))
    added = [obj["metadata"]["name"] for obj in plan.create]
    # Five unplaced replicas at two per worker want three more pods; maxReplicas 3 allows two.
    assert added == ["digits-s0-w1", "digits-s0-w2"]
    assert "WorkerAdded" in [e.reason for e in plan.events]
    assert plan.outcomes == {Outcome.WORKER_ADDED: 2}

    starting = pods + cluster_pods(service, workers=3, ready=False)[2:]
    again = decide_service(service, seen(starting, {0: ray}))
    assert again.create == [], "workers still starting are counted before more are added"


def test_idle_workers_go_after_the_timeout_but_never_below_min_or_a_busy_one() -> None:
    service = make_service()
    pods = cluster_pods(service, workers=3)
    config = deployed_config(service, pods)
    ray = {0: RayClusterView(True, app(config), nodes(pods), busy=frozenset({"digits-s0-w1"}))}
    first = decide_service(service, seen(pods, ray))
    assert first.delete_pods == []
    assert set(first.timers) == {"digits-s0-w0", "digits-s0-w2"}

    later = decide_service(service, seen(pods, ray, now=NOW + timedelta(seconds=61)), first.timers)
    # Two idle, one busy, minReplicas 1: both idle pods may go, the busy one stays.
    assert sorted(later.delete_pods) == ["digits-s0-w0", "digits-s0-w2"]
    assert [e.reason for e in later.events].count("WorkerRemoved") == 2
    assert later.outcomes == {Outcome.WORKER_REMOVED: 2}

    early = decide_service(service, seen(pods, ray, now=NOW + timedelta(seconds=30)), first.timers)
    assert early.delete_pods == []


def test_a_failed_worker_is_replaced() -> None:
    service = make_service()
    pods = cluster_pods(service)
    config = deployed_config(service, pods)
    broken = [pods[0], as_pod(worker_pod(service, 0, 0, None), cluster_digest(service.spec, None), phase="Failed")]
    plan = decide_service(service, seen(broken, {0: RayClusterView(True, app(config), frozenset({"digits-s0-head"}))}))
    assert plan.delete_pods == ["digits-s0-w0"]
    assert [obj["metadata"]["name"] for obj in plan.create] == ["digits-s0-w1"]
    assert "WorkerReplaced" in [e.reason for e in plan.events]
    assert plan.outcomes == {Outcome.WORKER_REPLACED: 1}


def test_a_new_model_is_deployed_in_place_while_the_old_replicas_serve() -> None:
    pods, _, ray, status = serving_at_ready()
    retrained = ModelSourceView(uri=SOURCE.uri, revision="uid:2")
    plan = decide_service(make_service(status), seen(pods, ray, source=retrained))
    assert len(deployed(plan)) == 1 and plan.create == [] and plan.delete_pods == []
    new_version = deployed(plan)[0].config["applications"][0]["args"]["model_version"]
    assert new_version != status.model.version
    assert plan.status.phase == "Upgrading"
    assert plan.status.model.version == status.model.version, "the old version serves until the new one runs"
    assert new_selector(plan) is None


def test_a_cluster_shape_change_builds_a_new_cluster_and_moves_traffic_when_it_runs() -> None:
    pods, _, ray, status = serving_at_ready()
    reshaped = make_service(status, image="registry.example/bigmodel-runtime:2")

    started = decide_service(reshaped, seen(pods, ray))
    assert started.status.pending is not None and started.status.pending.generation == 1
    assert started.status.pending.name == "digits-s1" and started.status.pending.started == NOW
    assert {o["metadata"]["name"] for o in started.create} == {
        "digits-s1", "digits-s1-ray-token", "digits-s1-head", "digits-s1-w0"
    }  # fmt: skip
    assert new_selector(started) is None and started.status.phase == "Upgrading"

    new_pods = [
        as_pod(head_pod(reshaped, 1, None), cluster_digest(reshaped.spec, None)),
        as_pod(worker_pod(reshaped, 1, 0, None), cluster_digest(reshaped.spec, None)),
    ]
    both = pods + new_pods
    building = make_service(started.status, image="registry.example/bigmodel-runtime:2")
    deploying = decide_service(building, seen(both, {**ray, 1: RayClusterView(True, None, nodes(new_pods))}))
    assert [call.head.ip for call in deployed(deploying)] == ["10.0.0.7"] and new_selector(deploying) is None

    new_app = app(deployed(deploying)[0].config)
    switched = decide_service(building, seen(both, {**ray, 1: RayClusterView(True, new_app, nodes(new_pods))}))
    selector = new_selector(switched)
    assert selector is not None and selector["bigmodel.dev/generation"] == "1"
    serving, retiring = switched.status.serving, switched.status.retiring
    assert serving is not None
    assert (serving.name, serving.generation, serving.application) == ("digits-s1", 1, "RUNNING")
    assert retiring is not None and retiring.generation == 0
    assert retiring.delete_after == NOW + timedelta(seconds=RETIRE_DELAY_S) and switched.status.pending is None
    assert switched.delete_pods == [], "the old cluster drains before it is deleted"
    assert "UpgradeComplete" in [e.reason for e in switched.events]
    assert switched.outcomes == {Outcome.UPGRADE_COMPLETE: 1}

    retired = make_service(switched.status, image="registry.example/bigmodel-runtime:2")
    later = NOW + timedelta(seconds=RETIRE_DELAY_S + 1)
    done = decide_service(
        retired, seen(both, {1: RayClusterView(True, new_app, nodes(new_pods))}, serving=1, now=later)
    )
    assert sorted(done.delete_pods) == ["digits-s0-head", "digits-s0-w0"]
    assert done.delete_services == ["digits-s0-head"]
    assert done.status.phase == "Ready" and done.status.retiring is None


def test_a_failed_new_cluster_never_takes_traffic_and_is_not_retried() -> None:
    pods, config, ray, status = serving_at_ready()
    reshaped = make_service(status, image="registry.example/bigmodel-runtime:broken")
    started = decide_service(reshaped, seen(pods, ray))
    digest = cluster_digest(reshaped.spec, None)
    new_pods = [as_pod(head_pod(reshaped, 1, None), digest), as_pod(worker_pod(reshaped, 1, 0, None), digest)]
    broken_app = ServeAppView(
        status="DEPLOY_FAILED", message="ModuleNotFoundError: torch", deployed=config["applications"][0]
    )
    building = make_service(started.status, image="registry.example/bigmodel-runtime:broken")
    failed = decide_service(
        building, seen(pods + new_pods, {**ray, 1: RayClusterView(True, broken_app, nodes(new_pods))})
    )
    assert new_selector(failed) is None
    assert sorted(failed.delete_pods) == ["digits-s1-head", "digits-s1-w0"]
    assert failed.status.pending is None
    assert failed.status.serving is not None and failed.status.serving.generation == 0
    assert failed.outcomes == {Outcome.UPGRADE_FAILED: 1}
    upgrade = next(c for c in failed.status.conditions if c.type == "UpgradeInProgress")
    assert (upgrade.status, upgrade.reason) == ("False", "UpgradeFailed") and "ModuleNotFoundError" in upgrade.message
    assert failed.status.phase == "Ready", "the old cluster keeps serving"

    after = make_service(failed.status, image="registry.example/bigmodel-runtime:broken")
    again = decide_service(after, seen(pods, ray))
    assert again.create == [] and again.status.pending is None


def test_a_lost_head_rebuilds_the_cluster_as_a_new_generation() -> None:
    service = make_service()
    pods = cluster_pods(service)
    failed_head = [as_pod(head_pod(service, 0, None), cluster_digest(service.spec, None), phase="Failed"), pods[1]]
    plan = decide_service(make_service(BigModelServiceStatus(phase="Ready")), seen(failed_head))
    assert sorted(plan.delete_pods) == ["digits-s0-head", "digits-s0-w0"]
    assert {o["metadata"]["name"] for o in plan.create} >= {"digits-s1-head", "digits-s1-w0"}
    selector = new_selector(plan)
    assert selector is not None and selector["bigmodel.dev/generation"] == "1"
    assert plan.status.serving is not None and plan.status.serving.name == "digits-s1"
    assert "ClusterLost" in [e.reason for e in plan.events]


def test_replica_capacity_is_checked_against_the_worker_pods() -> None:
    fits = BigModelServiceSpec.model_validate(
        {"model": {"uri": "/m"}, "replicaResources": {"cpu": 0.5}, "workers": {"resources": {"cpu": "2"}}}
    )
    assert capacity_errors(fits) == []
    capacity = worker_capacity(fits)
    assert workers_for(((((("CPU", 0.5),), 9)),), capacity) == 3, "four half-CPU replicas per two-CPU worker"
    assert workers_for(((((("CPU", 1.0), ("GPU", 1.0)), 2)),), capacity) == 0, "a GPU shape fits no CPU worker"
    too_big = BigModelServiceSpec.model_validate(
        {"model": {"uri": "/m"}, "replicaResources": {"cpu": 4, "gpu": 1}, "workers": {"resources": {"cpu": "2"}}}
    )
    errors = capacity_errors(too_big)
    assert errors[0].startswith("spec.replicaResources.cpu: 4 CPUs per replica do not fit a worker pod with 2")
    assert errors[1].startswith("spec.replicaResources.gpu:")


def test_worker_scaling_settings_never_rebuild_the_cluster_but_pod_sizes_do() -> None:
    base = cluster_digest(make_service().spec, None)
    scaling = {"minReplicas": 2, "maxReplicas": 5, "idleTimeoutSeconds": 30, "resources": {"cpu": "2"}}
    assert cluster_digest(make_service(workers=scaling).spec, None) == base
    assert cluster_digest(make_service(workers={"resources": {"cpu": "4"}}).spec, None) != base


def test_a_rolling_update_at_full_size_gets_one_surge_worker_above_the_max() -> None:
    service = make_service()
    pods = cluster_pods(service, workers=3)
    config = deployed_config(service, pods)
    demand = (((("CPU", 1.0),), 1),)
    rolling = RayClusterView(
        True, app(config, "DEPLOYING", ("RUNNING",) * 3 + ("STARTING",)), nodes(pods), nodes(pods), demand
    )
    plan = decide_service(service, seen(pods, {0: rolling}))
    assert [obj["metadata"]["name"] for obj in plan.create] == ["digits-s0-w3"], "maxSurge 1 above maxReplicas 3"

    scaling = RayClusterView(
        True, app(config, "RUNNING", ("RUNNING",) * 3 + ("STARTING",)), nodes(pods), nodes(pods), demand
    )
    assert decide_service(service, seen(pods, {0: scaling})).create == [], "autoscaling stays within maxReplicas"


def test_each_piece_of_the_pass_runs_on_its_own_observation() -> None:
    """The pieces of the service decision take the pass and an observation, like the whole: here scaling alone adds
    a worker for a replica Ray could not place, and the serving slot alone waits out a cluster still draining."""
    service = make_service()
    pods = cluster_pods(service)
    d = ServicePass(
        service,
        seen(pods, {0: RayClusterView(True, None, nodes(pods), demand=(((("CPU", 1.0),), 1),))}),
        None,
        3.0,
        OperatorPeer(),
    )
    scale_workers(d, 0)
    assert [obj["metadata"]["name"] for obj in d.plan.create] == ["digits-s0-w1"] and d.busy

    draining = [replace(pod, deleting=True) for pod in pods]
    d = ServicePass(service, seen(draining), None, 3.0, OperatorPeer())
    assert keep_serving_cluster(d) == 0
    assert d.plan.create == [] and d.plan.delete_pods == [] and d.busy, "no new pods under names still being freed"


def test_a_rebuilt_cluster_whose_status_write_was_lost_is_kept_not_built_again() -> None:
    service = make_service()
    rebuilt = cluster_pods(service, 1)
    draining = [replace(p, deleting=True) for p in cluster_pods(service, 0)]
    stored = BigModelServiceStatus.model_validate({"phase": "Ready", "serving": {"name": "digits-s0", "generation": 0}})
    plan = decide_service(make_service(stored), seen([*draining, *rebuilt], serving=1))
    assert plan.create == [] and not any(name.startswith("digits-s1") for name in plan.delete_pods)
    assert plan.status.serving is not None and plan.status.serving.generation == 1


@pytest.mark.parametrize(
    "change",
    [
        {"auth": {"secretName": "keys"}},
        {"servingFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]},
        {"limits": {"maxBodyBytes": 2048}},
    ],
    ids=["auth", "servingFrom", "limits"],
)
def test_protection_of_a_running_service_takes_a_new_cluster_and_its_default_changes_none(
    change: dict[str, Any],
) -> None:
    """Keys and proxy limits are in the pods' environment and callers in the cluster's policy: a service that turns
    them on must not keep serving from pods made without them; one that never set them keeps its digest."""
    plain = make_service()
    protected = BigModelService.model_validate(
        {**plain.model_dump(by_alias=True, mode="json"), "spec": {**plain.spec.to_wire(), **change}}, by_alias=True
    )
    assert cluster_digest(protected.spec, None) != cluster_digest(plain.spec, None)
    defaults = BigModelService.model_validate(
        {**plain.model_dump(by_alias=True, mode="json"), "spec": {**plain.spec.to_wire(), "limits": {}}}, by_alias=True
    )
    assert cluster_digest(defaults.spec, None) == cluster_digest(plain.spec, None)


def test_a_changing_service_is_looked_at_no_less_often_than_a_ready_one() -> None:
    pods, _, ray, status = serving_at_ready()
    retrained = ModelSourceView(uri=SOURCE.uri, revision="uid:2")
    rolling = decide_service(make_service(status), seen(pods, ray, source=retrained))
    assert rolling.status.phase == "Upgrading" and rolling.requeue_after == 2.0
    quick = decide_service(make_service(status), seen(pods, ray, source=retrained), poll_s=1.0)
    assert quick.requeue_after == 1.0, "polled every second when Ready, a rolling service must not wait 2 s"
    assert decide_service(make_service(status), seen(pods, ray)).requeue_after == 3.0
