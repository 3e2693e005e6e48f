"""The BigModelService decision: from the service and what is observed, the actions to take and the status to write.

A service has one serving cluster (status.clusterGeneration) behind its Kubernetes Service. A change of the model or
of Serve's settings is deployed into that cluster in place (Serve rolls the replicas). A change of the cluster's shape
builds a pending cluster next to it; the Service's selector moves to it only once its application is RUNNING, and the
old cluster is deleted after a grace period. Worker pods follow Serve's demand between minReplicas and maxReplicas.
Pure and level-based like the job decision: the same inputs always give the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bigmodel.api.service import BigModelService, BigModelServiceSpec, BigModelServiceStatus, ServedModel
from bigmodel.builders.naming import GENERATION_LABEL, ROLE_LABEL, serving_service_name
from bigmodel.builders.pod import ClaimMount
from bigmodel.builders.ray_cluster import head_pod, head_service, worker_pod
from bigmodel.builders.resources import ray_num_cpus
from bigmodel.builders.serve_app import SERVE_PORT, app_args, model_version, serve_deploy_config
from bigmodel.builders.serving_service import serving_selector, serving_service
from bigmodel.reconcile.plans import ChildChanges, Decision, Event, annotated, clear_validation, digest, invalid_status
from bigmodel.reconcile.service_observed import Demand, ModelSourceView, PodView, ServiceObservation, SourceProblem

CLUSTER_SPEC_ANNOTATION = "bigmodel.dev/cluster-spec"
# Long enough for requests already routed to the old cluster's proxy to complete after the Service moved.
RETIRE_DELAY_S = 30.0
# A pending cluster whose application is not RUNNING by then is given up; the serving cluster keeps the traffic.
UPGRADE_TIMEOUT_S = 900.0
POLL_BUSY_S = 2.0
POLL_READY_S = 3.0
POLL_SOURCE_S = 5.0


@dataclass(kw_only=True)
class ServicePlan(ChildChanges):
    """What to do for one service, in order: delete, create, deploy, point the Service, then write the status."""

    status: BigModelServiceStatus
    deploy: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(head pod IP, Serve config) for every cluster whose application is not the desired one."""
    serving_selector: dict[str, str] | None = None
    """The serving Service's new selector, when it must move to another cluster."""
    idle_since: dict[str, datetime] = field(default_factory=dict)
    """When each worker pod last became idle; kept by the caller for the next pass."""


def worker_capacity(spec: BigModelServiceSpec) -> dict[str, float]:
    """What one worker pod offers Ray's scheduler."""
    return {"CPU": float(ray_num_cpus(spec.workers.resources.cpu)), "GPU": float(spec.workers.resources.gpu)}


def workers_for(demand: Demand, capacity: dict[str, float]) -> int:
    """Worker pods that would place the demand; shapes that fit no worker pod (nor any pod we make) are left out."""
    needed = 0
    for shape, count in demand:
        asks = {resource: amount for resource, amount in shape if resource in capacity and amount > 0}
        per_worker = min((math.floor(capacity[r] / amount) for r, amount in asks.items()), default=0)
        if per_worker > 0:
            needed += math.ceil(count / per_worker)
    return needed


def capacity_errors(spec: BigModelServiceSpec) -> list[str]:
    """A replica that fits no worker pod would wait forever; say so as a spec error instead."""
    worker, replica = spec.workers.resources, spec.replica_resources
    errors = []
    if replica.cpu > ray_num_cpus(worker.cpu):
        errors.append(
            f"spec.replicaResources.cpu: {replica.cpu:g} CPUs per replica do not fit a worker pod with "
            f"{ray_num_cpus(worker.cpu)} (spec.workers.resources.cpu)"
        )
    if replica.gpu > worker.gpu:
        errors.append(
            f"spec.replicaResources.gpu: {replica.gpu:g} GPUs per replica do not fit a worker pod with "
            f"{worker.gpu} (spec.workers.resources.gpu)"
        )
    return errors


def cluster_digest(spec: BigModelServiceSpec, claim: ClaimMount | None) -> str:
    """What only a new cluster can change: the pods' image, environment, sizes, identity and volumes."""
    wire = spec.to_wire()
    workers = {
        k: v for k, v in wire["workers"].items() if k not in ("minReplicas", "maxReplicas", "idleTimeoutSeconds")
    }
    shape = {key: wire.get(key) for key in ("image", "env", "serviceAccountName", "imagePullSecrets", "head")}
    return digest(shape | {"workers": workers, "claim": claim})


def service_url(service: BigModelService) -> str:
    return f"http://{serving_service_name(service.metadata.name)}.{service.metadata.namespace}.svc:{SERVE_PORT}"


class _Decision(Decision):
    """One pass over one service; methods read the observation and fill the plan."""

    status: BigModelServiceStatus
    plan: ServicePlan

    def __init__(
        self, service: BigModelService, seen: ServiceObservation, idle_since: dict[str, datetime], poll_s: float
    ) -> None:
        self.service = service
        self.poll_s = poll_s
        self.spec = service.spec
        self.seen = seen
        self.now = seen.now
        self.generation = service.metadata.generation
        self.idle_since = idle_since
        status = (service.status or BigModelServiceStatus()).model_copy(deep=True)
        self.before = status.model_copy(deep=True)
        status.observed_generation = service.metadata.generation
        clear_validation(status, service.metadata.generation, seen.now)
        self.status = status
        self.plan = ServicePlan(status=status)
        source = seen.source
        self.source = source if isinstance(source, ModelSourceView) else None
        self.claim = (
            ClaimMount("model", *self.source.claim, read_only=True) if self.source and self.source.claim else None
        )
        self.digest = cluster_digest(self.spec, self.claim)
        self.busy = False

    # Small verbs.

    def had(self, type_: str, reason: str | None = None) -> bool:
        return any(
            c.type == type_ and c.status == "True" and reason in (None, c.reason) for c in self.before.conditions
        )

    def desired_model(self) -> ServedModel | None:
        """The model to serve: the source's, or while the source is unavailable, the one already served."""
        if self.source is not None:
            return ServedModel(source=self.source.uri, version=model_version(self.source.uri, self.source.revision))
        return self.before.model if self.before.model.source else None

    def desired_config(self, model: ServedModel) -> dict[str, Any]:
        name = self.service.metadata.name
        args = app_args(name, self.spec, model.source or "", model.version or "")
        return serve_deploy_config(name, self.spec, args)

    # Cluster lifecycle.

    def create_cluster(self, generation: int) -> None:
        owner, claim = self.service, self.claim
        pods = [head_pod(owner, generation, claim)]
        pods += [worker_pod(owner, generation, index, claim) for index in range(self.spec.workers.min_replicas)]
        stamp = {CLUSTER_SPEC_ANNOTATION: self.digest}
        self.plan.create += [head_service(owner, generation), *(annotated(pod, stamp) for pod in pods)]
        self.busy = True

    def remove_cluster(self, generation: int) -> None:
        self.plan.delete_pods += [p.name for p in self.seen.pods_of(generation) if not p.deleting]
        self.plan.delete_services += [s.name for s in self.seen.head_services if s.generation == generation]
        for pod in self.seen.pods_of(generation):
            self.idle_since.pop(pod.name, None)

    def next_generation(self) -> int:
        known = [*self.seen.generations(), self.status.cluster_generation, self.status.pending_generation or 0]
        return max(known) + 1

    def cluster_lost(self, generation: int) -> bool:
        """The head failed, or is gone while the rest of its cluster is still there."""
        head = self.seen.head(generation)
        if head is not None:
            return head.failed
        return any(not p.deleting for p in self.seen.pods_of(generation))

    # Per cluster: its application and its workers.

    def converge_app(self, generation: int, config: dict[str, Any] | None) -> str | None:
        """Deploy the desired application where it is not; returns the app's status, None while Ray is unreachable."""
        head = self.seen.head(generation)
        ray = self.seen.cluster(generation)
        if head is None or not head.ready or not head.pod_ip or not ray.reachable:
            self.busy = True
            return None
        app = ray.app
        if config is not None and (app is None or not app.runs(config["applications"][0])):
            self.plan.deploy.append((head.pod_ip, config))
            self.busy = True
            return "DEPLOYING"
        if app is None:
            return None
        if app.status != "RUNNING":
            self.busy = True
        return app.status

    def scale_workers(self, generation: int) -> None:
        workers = self.seen.workers(generation)
        for pod in workers:
            if pod.failed:
                self.plan.delete_pods.append(pod.name)
                self.event("Warning", "WorkerReplaced", f"worker pod {pod.name} stopped: {pod.failure or pod.phase}")
        healthy = [pod for pod in workers if not pod.failed]
        ray = self.seen.cluster(generation)
        group = self.spec.workers
        starting = [pod for pod in healthy if pod.name not in ray.nodes]
        wanted = len(healthy)
        if ray.reachable:
            wanted += max(workers_for(ray.demand, worker_capacity(self.spec)) - len(starting), 0)
        wanted = min(max(wanted, group.min_replicas), group.max_replicas + self.surge(generation))
        if wanted > len(healthy):
            self.add_workers(generation, wanted - len(healthy), len(healthy))
        elif ray.reachable:
            self.remove_idle_workers(generation, healthy)
        if starting:
            self.busy = True

    def surge(self, generation: int) -> int:
        """Room above maxReplicas while Serve rolls replicas to a new version: without it, a rolling update of a
        service at full size would wait forever for room to start its first new replica."""
        app = self.seen.cluster(generation).app
        rolling = app is not None and app.status == "DEPLOYING" and app.running_replicas > 0
        return self.spec.workers.max_surge if rolling else 0

    def add_workers(self, generation: int, count: int, healthy: int) -> None:
        taken = {pod.index for pod in self.seen.pods_of(generation) if pod.role == "worker"}
        free = (index for index in range(10**4) if index not in taken)
        stamp = {CLUSTER_SPEC_ANNOTATION: self.digest}
        for index in [next(free) for _ in range(count)]:
            self.plan.create.append(annotated(worker_pod(self.service, generation, index, self.claim), stamp))
        if generation == self.status.cluster_generation and healthy >= self.spec.workers.min_replicas:
            self.event("Normal", "WorkerAdded", f"{count} worker pod(s) added for Serve replicas that did not fit")
        self.busy = True

    def remove_idle_workers(self, generation: int, healthy: list[PodView]) -> None:
        """Workers where nothing (no replica) holds a CPU or GPU for idleTimeoutSeconds go, newest first, down to min."""
        ray = self.seen.cluster(generation)
        timeout = timedelta(seconds=self.spec.workers.idle_timeout_seconds)
        removable = len(healthy) - self.spec.workers.min_replicas
        for pod in sorted(healthy, key=lambda p: p.index or 0, reverse=True):
            if pod.name in ray.busy or pod.name not in ray.nodes:
                self.idle_since.pop(pod.name, None)
                continue
            since = self.idle_since.setdefault(pod.name, self.now)
            if removable > 0 and self.now - since >= timeout:
                removable -= 1
                self.plan.delete_pods.append(pod.name)
                self.idle_since.pop(pod.name, None)
                self.event("Normal", "WorkerRemoved", f"worker pod {pod.name} was idle for {timeout.seconds} s")

    # The pass.

    def decide(self) -> ServicePlan:
        model = self.desired_model()
        if model is None:
            return self.wait_for_source()
        config = self.desired_config(model)
        active = self.status.cluster_generation
        if self.cluster_lost(active):
            rebuilt = self.next_generation()
            self.event("Warning", "ClusterLost", f"the Ray head of cluster {active} failed; building cluster {rebuilt}")
            self.remove_cluster(active)
            active = self.status.cluster_generation = rebuilt
        if self.seen.head(active) is None and not self.seen.pods_of(active):
            self.create_cluster(active)
        else:
            self.scale_workers(active)
        self.point_service_at(active)
        app_status = self.converge_app(active, config)
        self.upgrade_cluster(config)
        self.retire()
        self.report(model, app_status)
        self.plan.idle_since = self.idle_since
        return self.plan

    def wait_for_source(self) -> ServicePlan:
        problem = self.seen.source
        assert isinstance(problem, SourceProblem)
        if not self.had("ModelLoaded") and not any(
            c.type == "ModelLoaded" and c.reason == problem.reason and c.message == problem.message
            for c in self.before.conditions
        ):
            self.event("Warning" if problem.final else "Normal", problem.reason, problem.message)
        self.condition("ModelLoaded", False, problem.reason, problem.message)
        self.condition("Ready", False, problem.reason, problem.message)
        self.status.phase = "Failed" if problem.final else "Pending"
        self.status.message = problem.message
        self.plan.requeue_after = None if problem.final else POLL_SOURCE_S
        return self.plan

    def point_service_at(self, generation: int) -> None:
        serving = self.seen.serving
        if serving is None:
            self.plan.create.append(serving_service(self.service, generation))
        elif serving.generation != generation:
            self.plan.serving_selector = serving_selector(self.service.metadata.name, generation)

    def upgrade_cluster(self, config: dict[str, Any]) -> None:
        status, active = self.status, self.status.cluster_generation
        pending = status.pending_generation
        head = self.seen.head(active)
        active_digest = head.annotations.get(CLUSTER_SPEC_ANNOTATION, self.digest) if head else self.digest
        if pending is not None:
            pending_head = self.seen.head(pending)
            pending_digest = pending_head.annotations.get(CLUSTER_SPEC_ANNOTATION) if pending_head else self.digest
            if self.digest != pending_digest or self.digest == active_digest:
                self.event("Normal", "UpgradeCancelled", f"cluster {pending} no longer matches the spec")
                self.remove_cluster(pending)
                status.pending_generation = status.upgrade_started = None
                pending = None
        if pending is None:
            if self.digest == active_digest or self.digest == status.failed_cluster_spec:
                return
            pending = status.pending_generation = self.next_generation()
            status.upgrade_started = self.now
            self.create_cluster(pending)
            self.event("Normal", "UpgradeStarted", f"the cluster shape changed; building cluster {pending}")
            return
        self.scale_workers(pending)
        app_status = self.converge_app(pending, config)
        started = status.upgrade_started or self.now
        failure = self.upgrade_failure(pending, app_status, started)
        if failure:
            self.remove_cluster(pending)
            status.pending_generation = status.upgrade_started = None
            status.failed_cluster_spec = self.digest
            self.condition("UpgradeInProgress", False, "UpgradeFailed", failure)
            self.event("Warning", "UpgradeFailed", f"{failure}; cluster {active} keeps serving")
            return
        if app_status == "RUNNING":
            self.switch_to(pending)

    def upgrade_failure(self, pending: int, app_status: str | None, started: datetime) -> str | None:
        if self.cluster_lost(pending):
            return f"the Ray head of the new cluster {pending} failed"
        if app_status == "DEPLOY_FAILED":
            app = self.seen.cluster(pending).app
            return f"the application failed to deploy on the new cluster {pending}: {app.message if app else ''}"
        if (self.now - started).total_seconds() > UPGRADE_TIMEOUT_S:
            return f"the new cluster {pending} was not serving within {UPGRADE_TIMEOUT_S:.0f} s"
        return None

    def switch_to(self, pending: int) -> None:
        status = self.status
        old = status.cluster_generation
        if status.retiring_generation is not None:
            self.remove_cluster(status.retiring_generation)
        self.plan.serving_selector = serving_selector(self.service.metadata.name, pending)
        status.retiring_generation, status.retire_after = old, self.now + timedelta(seconds=RETIRE_DELAY_S)
        status.cluster_generation, status.pending_generation, status.upgrade_started = pending, None, None
        self.event("Normal", "UpgradeComplete", f"traffic moved to cluster {pending}; cluster {old} is retired")

    def retire(self) -> None:
        status = self.status
        keep = {status.cluster_generation, status.pending_generation, status.retiring_generation}
        if status.retiring_generation is not None and status.retire_after is not None:
            if self.now >= status.retire_after:
                self.remove_cluster(status.retiring_generation)
                status.retiring_generation = status.retire_after = None
            else:
                self.busy = True
        for generation in self.seen.generations() - keep:
            self.remove_cluster(generation)

    # Status.

    def report(self, model: ServedModel, app_status: str | None) -> None:
        status, active = self.status, self.status.cluster_generation
        app = self.seen.cluster(active).app if self.seen.cluster(active).reachable else None
        running, desired = (app.running_replicas, app.target_replicas) if app else (0, 0)
        if app is not None and app.status == "DEPLOYING" and not app.replica_states:
            # Right after a config change Serve reports the application before its deployments; the replicas
            # that were serving still are.
            running, desired = self.before.replicas.running, self.before.replicas.desired
        serving_now = running > 0 and app_status is not None
        status.replicas.desired = desired
        status.replicas.running = running
        status.replicas_ready = f"{running}/{status.replicas.desired}"
        workers = [p for p in self.seen.workers(active) if not p.failed]
        status.workers.desired = len(workers) + sum(1 for o in self.plan.create if _is_worker_of(o, active))
        status.workers.ready = sum(1 for p in workers if p.ready)
        status.workers_ready = f"{status.workers.ready}/{status.workers.desired}"
        status.url = service_url(self.service)
        loaded = app_status == "RUNNING"
        if loaded:
            status.model = model
        self.condition("Ready", serving_now, "Serving" if serving_now else "NotServing", self.ready_message(app))
        if loaded:
            self.condition("ModelLoaded", True, "Loaded", f"version {model.version} from {model.source}")
        elif app_status == "DEPLOY_FAILED":
            self.condition("ModelLoaded", False, "FailedToLoad", app.message if app else "")
        else:
            self.condition("ModelLoaded", False, "Loading", "the replicas are loading the model")
        rolling = serving_now and not loaded
        upgrading = rolling or status.pending_generation is not None
        if upgrading:
            reason = "NewCluster" if status.pending_generation is not None else "RollingUpdate"
            self.condition("UpgradeInProgress", True, reason, self.upgrade_message(model))
        elif status.failed_cluster_spec != self.digest:
            self.condition("UpgradeInProgress", False, "UpToDate", "")
        status.phase = self.phase(serving_now, upgrading, app_status)
        status.message = self.message(app_status, app.message if app else "")
        if status.phase == "Ready" and self.before.phase != "Ready":
            self.event("Normal", "Ready", f"serving {model.source} (version {model.version}) at {status.url}")
        # Serve's demand changes without any Kubernetes event, so a Ready service is still looked at every poll_s.
        self.plan.requeue_after = POLL_BUSY_S if self.busy or status.phase != "Ready" else self.poll_s

    def phase(self, serving: bool, upgrading: bool, app_status: str | None) -> Any:
        if serving:
            return "Upgrading" if upgrading else "Ready"
        if app_status in ("DEPLOY_FAILED", "UNHEALTHY"):
            return "Failed"
        return "Deploying" if self.seen.head(self.status.cluster_generation) else "Pending"

    def ready_message(self, app: Any) -> str:
        if app is None:
            return "the Ray cluster is starting"
        return f"{app.running_replicas} of {app.target_replicas} replicas running"

    def upgrade_message(self, model: ServedModel) -> str:
        if self.status.pending_generation is not None:
            return f"building cluster {self.status.pending_generation}; cluster {self.status.cluster_generation} serves"
        return f"Serve is rolling the replicas to version {model.version}"

    def message(self, app_status: str | None, app_message: str) -> str:
        if self.status.pending_generation is not None:
            return f"upgrading: cluster {self.status.pending_generation} is being built"
        if app_status in ("DEPLOY_FAILED", "UNHEALTHY"):
            return f"the application is {app_status}: {app_message}"
        if app_status is None:
            return "waiting for the Ray cluster"
        if isinstance(self.seen.source, SourceProblem):
            return f"serving the last model; {self.seen.source.message}"
        return f"application {app_status}"


def _is_worker_of(obj: dict[str, Any], generation: int) -> bool:
    labels = obj.get("metadata", {}).get("labels", {})
    return labels.get(ROLE_LABEL) == "worker" and labels.get(GENERATION_LABEL) == str(generation)


def decide_service(
    service: BigModelService,
    seen: ServiceObservation,
    idle_since: dict[str, datetime] | None = None,
    poll_s: float = POLL_READY_S,
) -> ServicePlan:
    """The plan for one service. Pure: the clock comes in the observation, the idle timers in `idle_since`."""
    plan = _Decision(service, seen, dict(idle_since or {}), poll_s).decide()
    plan.delete_pods = list(dict.fromkeys(plan.delete_pods))
    plan.delete_services = list(dict.fromkeys(plan.delete_services))
    return plan


def service_validation_plan(
    status: BigModelServiceStatus | None, generation: int | None, errors: list[str], now: datetime
) -> ServicePlan:
    """An invalid spec: say where and why, change nothing that serves, and wait for the next edit."""
    updated, first_time = invalid_status(status or BigModelServiceStatus(), generation, errors, now)
    if updated.phase in ("Pending", "Deploying"):
        updated.phase = "Failed"
    plan = ServicePlan(status=updated)
    if first_time:
        plan.events.append(Event("Warning", "ValidationFailed", "; ".join(errors)))
    return plan
