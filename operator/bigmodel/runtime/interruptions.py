"""Checkpoints a run takes because its cluster is about to change, so that the change costs no step.

- **Preemption.** A pod's SIGTERM (a node drain, a spot reclaim, a suspend, a rebuild) reaches `ray start`, which marks
  its Ray node draining with a deadline (the pod's grace period less what Ray needs to stop) before it stops the node.
  When the node of any rank, or the head's, is draining, the run saves a checkpoint at its next step and trains no
  further: Ray Train restarts it from that checkpoint once the node is gone (a preemption, which Ray Train does not
  count against maxWorkerFailures), or the operator rebuilds the cluster around it.
- **Growth** (elastic runs). When the cluster has room for one more worker than the run has, the run saves a
  checkpoint and ends its attempt, for the driver to start it again on more workers (`driver`).

Every rank looks in a thread; the ranks agree with one all-reduce on a gloo group of their own, so that they all save
after the same step. Not after every step: an all-reduce costs about half a millisecond here, a seventh of a small
model's step, so after a few steps the ranks settle on agreeing about every AGREE_EVERY_S, counted in steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import ray
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

POLL_S = 0.5
# How long an attempt trains before it grows: room that another user takes between the driver's count and the new
# attempt's start leaves the run on as many workers as before, and it must not restart over and over for it.
GROWTH_AFTER_S = 10.0
AGREE_EVERY_S = 0.25
# Steps timed (on rank 0) before the ranks settle on how many steps make AGREE_EVERY_S.
TIMED_STEPS = 8


@dataclass(frozen=True)
class Interruption:
    kind: Literal["preemption", "growth"]
    until: float = 0.0
    """For a preemption, the drain's deadline (time.time())."""


def draining_deadlines() -> dict[str, float]:
    """Ray nodes being drained -> their deadline (time.time(); inf where none was given).

    Ray has no public call for this: the one Ray Train's own preemption watcher makes is used, confined here.
    """
    draining: dict[str, int] = ray._private.state.state.get_draining_nodes()
    return {node: deadline_ms / 1000 if deadline_ms else float("inf") for node, deadline_ms in draining.items()}


def drain_this_node(seconds: float, why: str) -> None:
    """Mark the Ray node of this process draining for `seconds`, as `ray start` does on a pod's SIGTERM: a run on it
    checkpoints at its next step. Confined here with draining_deadlines, for the same reason."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._private.worker.global_worker.gcs_client
    deadline_ms = int((time.time() + seconds) * 1000)
    reason = autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION
    accepted, refusal = gcs.drain_node(ray.get_runtime_context().get_node_id(), reason, why, deadline_ms)
    if not accepted:
        raise RuntimeError(f"Ray refused to drain this node: {refusal}")


class Interruptions:
    """One rank's watch for preemption (of `nodes`) and, where `room_to_grow` is given, for growth."""

    def __init__(
        self,
        group: dist.ProcessGroup,
        nodes: Iterable[str],
        room_to_grow: Callable[[], bool] | None = None,
        poll_s: float = POLL_S,
        draining: Callable[[], dict[str, float]] = draining_deadlines,
        grow_after_s: float = GROWTH_AFTER_S,
    ) -> None:
        self._group = group
        self._draining = draining
        self._nodes = set(nodes)
        self._room_to_grow = room_to_grow
        self._poll_s = poll_s
        self._preempted_until = 0.0
        self._grow = False
        self._grow_from = time.time() + grow_after_s
        self._calls = 0
        self._every = 1
        self._timed_from = 0.0
        self._seen: set[str] = set()
        """Drains already answered with a checkpoint: a rank that outlives one trains on."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bigmodel-interruptions", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        warned = False
        while not self._stop.wait(self._poll_s):
            try:
                draining = {n: d for n, d in self._draining().items() if n in self._nodes and n not in self._seen}
                self._preempted_until = min(draining.values(), default=0.0)
                if self._room_to_grow is not None:
                    self._grow = time.time() >= self._grow_from and self._room_to_grow()
            except Exception as error:  # a Ray hiccup must not end the run; the next poll tries again
                if not warned:
                    logger.warning("cannot watch for preemption: %s", error)
                    warned = True

    def agreed(self) -> Interruption | None:
        """Whether this step ends with a checkpoint, as every rank agrees; call once a step on every rank."""
        self._calls += 1
        if self._calls == 1:
            self._timed_from = time.monotonic()
        elif self._calls == TIMED_STEPS:
            step_s = (time.monotonic() - self._timed_from) / (TIMED_STEPS - 1)
            every = torch.tensor([max(1, min(1000, int(AGREE_EVERY_S / max(step_s, 1e-6))))], dtype=torch.int64)
            dist.broadcast(every, src=0, group=self._group)
            self._every = int(every.item())
        if self._calls % self._every:
            return None
        local = torch.tensor([self._preempted_until, 1.0 if self._grow else 0.0], dtype=torch.float64)
        dist.all_reduce(local, op=dist.ReduceOp.MAX, group=self._group)
        preempted_until, grow = float(local[0]), bool(local[1])
        if preempted_until > 0:
            return Interruption("preemption", preempted_until)
        if grow:
            return Interruption("growth")
        return None

    def wait_out(self, interruption: Interruption) -> None:
        """After a preemption's checkpoint: train no further until the node is gone (this process with it, or Ray
        Train restarts the run) or the drain's deadline has passed; all ranks leave together."""
        while True:
            over = torch.tensor([1.0 if time.time() >= interruption.until else 0.0], dtype=torch.float64)
            dist.all_reduce(over, op=dist.ReduceOp.MAX, group=self._group)
            if over.item():
                break
            time.sleep(self._poll_s)
        self._seen |= {n for n in self._draining() if n in self._nodes}
        self._preempted_until = 0.0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
