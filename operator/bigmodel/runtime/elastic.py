"""Elastic runs (`workers.minReplicas`): each attempt starts on the workers the cluster holds, between minReplicas and
replicas, and a lost worker costs a restart on the ones left rather than a wait for its replacement.

The driver sizes each attempt itself and runs it as a fixed-size Ray Train run with no retry of its own. Ray Train's
elastic policy would do the same from a view of the cluster that Ray Data's autoscaling coordinator refreshes every
20 s: restarted on a view that still counts a lost node, a run waits out Ray Train's 60 s start timeout before it
tries again (a kill took 72 s to the first step on one worker here, against 19.5 s to the first step on a
replacement pod). The driver counts live nodes from the GCS, which knows of a lost node within its health checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import ray
from ray.exceptions import RayActorError
from ray.train import PreemptionError

from bigmodel.api.wire import RAY_HEALTH_CHECK_FAILURES, RAY_HEALTH_CHECK_PERIOD_MS
from bigmodel.runtime.interruptions import draining_deadlines

# How long the GCS takes to mark a lost node dead (its health checks, and a second of slack): an attempt started
# sooner would count the lost node's room.
NODE_LOSS_S = RAY_HEALTH_CHECK_PERIOD_MS * RAY_HEALTH_CHECK_FAILURES / 1000 + 1.0
# How long the first attempt waits for every worker before it starts with those there are: the last worker pods may
# still be joining when the driver starts.
START_WAIT_S = 60.0
POLL_S = 0.5

Result = TypeVar("Result")


def room_for(workers: int, resources_per_worker: Mapping[str, float]) -> int:
    """How many workers (at most `workers`) the live nodes that are not being drained could hold, busy or not."""
    draining = draining_deadlines()
    fits = 0
    for node in ray.nodes():
        if node.get("Alive") and node.get("NodeID") not in draining:
            have = node.get("Resources", {})
            fits += min(int(have.get(name, 0.0) // amount) for name, amount in resources_per_worker.items() if amount)
    return min(fits, workers)


def workers_to_start(fewest: int, most: int, resources_per_worker: Mapping[str, float], wait_for_all_s: float) -> int:
    """Wait up to wait_for_all_s for room for `most` workers, then as long as it takes for room for `fewest`."""
    deadline = time.monotonic() + wait_for_all_s
    while True:
        room = room_for(most, resources_per_worker)
        if room == most or (room >= fewest and time.monotonic() >= deadline):
            return room
        time.sleep(POLL_S)


def failed_by_preemption(error: BaseException | None) -> bool:
    """Whether a run ended because a node of it was preempted (drained), which costs no worker failure."""
    while error is not None:
        if isinstance(error, PreemptionError):
            return True
        failures: dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
        for failure in failures.values():
            failure = getattr(failure, "health_check_failure", failure)
            if isinstance(failure, RayActorError) and failure.preempted:
                return True
        error = error.__cause__
    return False


def fit_elastically(
    fit_on: Callable[[int], Result],
    *,
    fewest: int,
    most: int,
    resources_per_worker: Mapping[str, float],
    max_failures: int,
    asked_to_grow: Callable[[], bool],
) -> Result:
    """Run attempts of `fit_on(workers)` until one finishes without asking to grow; a failed attempt is followed by
    one on the workers left, up to max_failures failures that no preemption explains."""
    failures = 0
    wait_for_all_s = START_WAIT_S
    while True:
        workers = workers_to_start(fewest, most, resources_per_worker, wait_for_all_s)
        wait_for_all_s = 0.0
        try:
            result = fit_on(workers)
        except Exception as error:
            if not failed_by_preemption(error):
                failures += 1
                if failures > max_failures:
                    raise
            time.sleep(NODE_LOSS_S)
            continue
        if not asked_to_grow():
            return result
