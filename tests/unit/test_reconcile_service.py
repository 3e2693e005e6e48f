"""The BigModelService lifecycle as pure decisions: a service and an observation in, actions and a status out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from bigmodel.api.service import BigModelService, BigModelServiceSpec, BigModelServiceStatus
from bigmodel.builders.ray_cluster import head_pod, worker_pod
from bigmodel.reconcile.observed import PodView, ServiceView
from bigmodel.reconcile.service import (
    CLUSTER_SPEC_ANNOTATION,
    RETIRE_DELAY_S,
    ServicePlan,
    capacity_errors,
    cluster_digest,
    decide_service,
    worker_capacity,
    workers_for,
)
from bigmodel.reconcile.service_observed import (
    ModelSourceView,
    RayClusterView,
    ServeAppView,
    ServiceObservation,
    ServingServiceView,
    SourceProblem,
)

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
    pods = [as_pod(head_pod(service, generation), digest, **kw)]
    return pods + [as_pod(worker_pod(service, generation, i), digest, **kw) for i in range(workers)]


def app(
    plan_or_config: ServicePlan | dict[str, Any], status: str = "RUNNING", replicas: tuple[str, ...] = ("RUNNING",)
) -> ServeAppView:
    config = plan_or_config.deploy[0][1] if isinstance(plan_or_config, ServicePlan) else plan_or_config
    return ServeAppView(status, deployed=config["applications"][0], target_replicas=len(replicas), replica_states=replicas)


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
        head_services=[ServiceView(f"digits-s{g}-head", g) for g in generations],
        serving=ServingServiceView("digits-serve", serving) if serving is not None else None,
        clusters=clusters or {},
    )


def nodes(service_pods: list[PodView]) -> frozenset[str]:
    return frozenset(p.name for p in service_pods)


def deployed_config(service: BigModelService, pods: list[PodView]) -> dict[str, Any]:
    """The config the operator deploys to a reachable cluster with no application yet."""
    plan = decide_service(service, seen(pods, {0: RayClusterView(True, None, nodes(pods))}))
    assert plan.deploy, "no Serve config was deployed"
    return plan.deploy[0][1]


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
    assert plan.create == [] and plan.deploy == []
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
    assert names == ["digits-s0-head", "digits-s0-head", "digits-s0-w0", "digits-serve"]
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
    assert config["proxy_location"] == "HeadOnly"

    starting = app(config, "DEPLOYING", ("STARTING",))
    deploying = decide_service(service, seen(pods, {0: RayClusterView(True, starting, nodes(pods))}))
    assert deploying.deploy == [], "a config Serve already has is not deployed again"
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
    assert set(first.idle_since) == {"digits-s0-w0", "digits-s0-w2"}

    later = decide_service(service, seen(pods, ray, now=NOW + timedelta(seconds=61)), first.idle_since)
    # Two idle, one busy, minReplicas 1: both idle pods may go, the busy one stays.
    assert sorted(later.delete_pods) == ["digits-s0-w0", "digits-s0-w2"]
    assert [e.reason for e in later.events].count("WorkerRemoved") == 2

    early = decide_service(service, seen(pods, ray, now=NOW + timedelta(seconds=30)), first.idle_since)
    assert early.delete_pods == []


def test_a_failed_worker_is_replaced() -> None:
    service = make_service()
    pods = cluster_pods(service)
    config = deployed_config(service, pods)
    broken = [pods[0], as_pod(worker_pod(service, 0, 0), cluster_digest(service.spec, None), phase="Failed")]
    plan = decide_service(service, seen(broken, {0: RayClusterView(True, app(config), frozenset({"digits-s0-head"}))}))
    assert plan.delete_pods == ["digits-s0-w0"]
    assert [obj["metadata"]["name"] for obj in plan.create] == ["digits-s0-w1"]
    assert "WorkerReplaced" in [e.reason for e in plan.events]


def test_a_new_model_is_deployed_in_place_while_the_old_replicas_serve() -> None:
    pods, _, ray, status = serving_at_ready()
    retrained = ModelSourceView(uri=SOURCE.uri, revision="uid:2")
    plan = decide_service(make_service(status), seen(pods, ray, source=retrained))
    assert len(plan.deploy) == 1 and plan.create == [] and plan.delete_pods == []
    new_version = plan.deploy[0][1]["applications"][0]["args"]["model_version"]
    assert new_version != status.model.version
    assert plan.status.phase == "Upgrading"
    assert plan.status.model.version == status.model.version, "the old version serves until the new one runs"
    assert plan.serving_selector is None


def test_a_cluster_shape_change_builds_a_new_cluster_and_moves_traffic_when_it_runs() -> None:
    pods, _, ray, status = serving_at_ready()
    reshaped = make_service(status, image="registry.example/bigmodel-runtime:2")

    started = decide_service(reshaped, seen(pods, ray))
    assert started.status.pending_generation == 1
    assert {o["metadata"]["name"] for o in started.create} == {"digits-s1-head", "digits-s1-w0"}
    assert started.serving_selector is None and started.status.phase == "Upgrading"

    new_pods = [as_pod(head_pod(reshaped, 1), cluster_digest(reshaped.spec, None)),
                as_pod(worker_pod(reshaped, 1, 0), cluster_digest(reshaped.spec, None))]
    both = pods + new_pods
    building = make_service(started.status, image="registry.example/bigmodel-runtime:2")
    deploying = decide_service(building, seen(both, {**ray, 1: RayClusterView(True, None, nodes(new_pods))}))
    assert [ip for ip, _ in deploying.deploy] == ["10.0.0.7"] and deploying.serving_selector is None

    new_app = app(deploying.deploy[0][1])
    switched = decide_service(building, seen(both, {**ray, 1: RayClusterView(True, new_app, nodes(new_pods))}))
    assert switched.serving_selector is not None and switched.serving_selector["bigmodel.dev/generation"] == "1"
    assert switched.status.cluster_generation == 1 and switched.status.retiring_generation == 0
    assert switched.delete_pods == [], "the old cluster drains before it is deleted"
    assert "UpgradeComplete" in [e.reason for e in switched.events]

    retired = make_service(switched.status, image="registry.example/bigmodel-runtime:2")
    later = NOW + timedelta(seconds=RETIRE_DELAY_S + 1)
    done = decide_service(retired, seen(both, {1: RayClusterView(True, new_app, nodes(new_pods))}, serving=1, now=later))
    assert sorted(done.delete_pods) == ["digits-s0-head", "digits-s0-w0"]
    assert done.delete_services == ["digits-s0-head"]
    assert done.status.phase == "Ready"


def test_a_failed_new_cluster_never_takes_traffic_and_is_not_retried() -> None:
    pods, config, ray, status = serving_at_ready()
    reshaped = make_service(status, image="registry.example/bigmodel-runtime:broken")
    started = decide_service(reshaped, seen(pods, ray))
    digest = cluster_digest(reshaped.spec, None)
    new_pods = [as_pod(head_pod(reshaped, 1), digest), as_pod(worker_pod(reshaped, 1, 0), digest)]
    broken_app = ServeAppView(status="DEPLOY_FAILED", message="ModuleNotFoundError: torch", deployed=config["applications"][0])
    building = make_service(started.status, image="registry.example/bigmodel-runtime:broken")
    failed = decide_service(building, seen(pods + new_pods, {**ray, 1: RayClusterView(True, broken_app, nodes(new_pods))}))
    assert failed.serving_selector is None
    assert sorted(failed.delete_pods) == ["digits-s1-head", "digits-s1-w0"]
    assert failed.status.pending_generation is None and failed.status.cluster_generation == 0
    upgrade = next(c for c in failed.status.conditions if c.type == "UpgradeInProgress")
    assert (upgrade.status, upgrade.reason) == ("False", "UpgradeFailed") and "ModuleNotFoundError" in upgrade.message
    assert failed.status.phase == "Ready", "the old cluster keeps serving"

    after = make_service(failed.status, image="registry.example/bigmodel-runtime:broken")
    again = decide_service(after, seen(pods, ray))
    assert again.create == [] and again.status.pending_generation is None


def test_a_lost_head_rebuilds_the_cluster_as_a_new_generation() -> None:
    service = make_service()
    pods = cluster_pods(service)
    failed_head = [as_pod(head_pod(service, 0), cluster_digest(service.spec, None), phase="Failed"), pods[1]]
    plan = decide_service(make_service(BigModelServiceStatus(phase="Ready")), seen(failed_head))
    assert sorted(plan.delete_pods) == ["digits-s0-head", "digits-s0-w0"]
    assert {o["metadata"]["name"] for o in plan.create} >= {"digits-s1-head", "digits-s1-w0"}
    assert plan.serving_selector is not None and plan.serving_selector["bigmodel.dev/generation"] == "1"
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
    rolling = RayClusterView(True, app(config, "DEPLOYING", ("RUNNING",) * 3 + ("STARTING",)), nodes(pods), nodes(pods), demand)
    plan = decide_service(service, seen(pods, {0: rolling}))
    assert [obj["metadata"]["name"] for obj in plan.create] == ["digits-s0-w3"], "maxSurge 1 above maxReplicas 3"

    scaling = RayClusterView(True, app(config, "RUNNING", ("RUNNING",) * 3 + ("STARTING",)), nodes(pods), nodes(pods), demand)
    assert decide_service(service, seen(pods, {0: scaling})).create == [], "autoscaling stays within maxReplicas"
