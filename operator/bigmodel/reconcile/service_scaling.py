"""Worker pods of a BigModelService's clusters follow Serve's demand, between minReplicas and maxReplicas.

Ray reports what its scheduler cannot place (the autoscaler monitor's resourceDemand) and which nodes hold CPUs or
GPUs; more worker pods are added for the first, idle ones are removed after idleTimeoutSeconds.
"""

from __future__ import annotations

import math
from datetime import timedelta

from bigmodel.api.service import BigModelServiceSpec
from bigmodel.reconcile.observed import PodView
from bigmodel.reconcile.plans import Outcome
from bigmodel.reconcile.service_observed import Demand
from bigmodel.reconcile.service_pass import ServicePass


def worker_capacity(spec: BigModelServiceSpec) -> dict[str, float]:
    """What one worker pod offers Ray's scheduler."""
    return {"CPU": float(spec.workers.resources.ray_cpus()), "GPU": float(spec.workers.resources.gpu)}


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
    if replica.cpu > worker.ray_cpus():
        errors.append(
            f"spec.replicaResources.cpu: {replica.cpu:g} CPUs per replica do not fit a worker pod with "
            f"{worker.ray_cpus()} (spec.workers.resources.cpu)"
        )
    if replica.gpu > worker.gpu:
        errors.append(
            f"spec.replicaResources.gpu: {replica.gpu:g} GPUs per replica do not fit a worker pod with "
            f"{worker.gpu} (spec.workers.resources.gpu)"
        )
    return errors


def scale_workers(d: ServicePass, generation: int) -> None:
    """Failed workers go; then as many workers as Serve's demand asks for, between min and max (plus surge)."""
    workers = d.seen.workers(generation)
    d.clusters.replace_failed_workers(workers)
    healthy = [pod for pod in workers if not pod.failed]
    ray = d.seen.cluster(generation)
    group = d.spec.workers
    starting = [pod for pod in healthy if pod.name not in ray.nodes]
    wanted = len(healthy)
    if ray.reachable:
        wanted += max(workers_for(ray.demand, worker_capacity(d.spec)) - len(starting), 0)
    wanted = min(max(wanted, group.min_replicas), group.max_replicas + surge(d, generation))
    if wanted > len(healthy):
        add_workers(d, generation, wanted - len(healthy), len(healthy))
    elif ray.reachable:
        remove_idle_workers(d, generation, healthy)
    if starting:
        d.busy = True


def surge(d: ServicePass, generation: int) -> int:
    """Room above maxReplicas while Serve rolls replicas to a new version or starts a canary's: without it, a
    service at full size would wait forever for room to start the first replica of the new version."""
    app = d.seen.cluster(generation).app
    rolling = app is not None and app.status == "DEPLOYING" and app.running_replicas > 0
    trial = d.status.canary is not None and d.status.canary.phase == "Deploying"
    return d.spec.workers.max_surge if rolling or trial else 0


def add_workers(d: ServicePass, generation: int, count: int, healthy: int) -> None:
    d.clusters.add_workers(generation, d.clusters.free_worker_indexes(generation, count))
    # Below minReplicas the pods replace failed ones or complete a new cluster: not Serve's demand.
    if generation == d.active and healthy >= d.spec.workers.min_replicas:
        d.event("Normal", "WorkerAdded", f"{count} worker pod(s) added for Serve replicas that did not fit")
        d.count(Outcome.WORKER_ADDED, count)
    d.busy = True


def remove_idle_workers(d: ServicePass, generation: int, healthy: list[PodView]) -> None:
    """Workers where nothing (no replica) holds a CPU or GPU for idleTimeoutSeconds go, newest first, down to min."""
    ray = d.seen.cluster(generation)
    timeout = timedelta(seconds=d.spec.workers.idle_timeout_seconds)
    removable = len(healthy) - d.spec.workers.min_replicas
    timers = d.plan.timers
    for pod in sorted(healthy, key=lambda p: p.index or 0, reverse=True):
        if pod.name in ray.busy or pod.name not in ray.nodes:
            timers.pop(pod.name, None)
            continue
        since = timers.setdefault(pod.name, d.now)
        if removable > 0 and d.now - since >= timeout:
            removable -= 1
            d.clusters.remove_pod(pod)
            d.event("Normal", "WorkerRemoved", f"worker pod {pod.name} was idle for {timeout.seconds} s")
            d.count(Outcome.WORKER_REMOVED)
