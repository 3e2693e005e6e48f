"""Every rank checkpoints after the same step when a node of the run drains or the run may grow, and all wait it out
together: real gloo ranks, the drain and the room to grow given at the `draining` and `room_to_grow` seams."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.distributed as dist

from bigmodel.runtime.interruptions import Interruptions
from tests.support.torch_ranks import run_ranks

POLL_S = 0.05


def _steps_until_agreed(watch: Interruptions, record: dict[str, object]) -> None:
    for step in range(1, 400):
        time.sleep(0.01)
        interruption = watch.agreed()
        if interruption is not None:
            record.update(step=step, kind=interruption.kind, until=interruption.until)
            watch.wait_out(interruption)
            record["left_at"] = time.time()
            return


def _a_drained_node(rank: int, world: int, out: str) -> None:
    # Only rank 1's node drains, and only rank 1 sees it: rank 0 must checkpoint after the same step all the same.
    drained_from, deadline = time.time() + 0.3, time.time() + 1.5

    def draining() -> dict[str, float]:
        return {"node-1": deadline} if time.time() >= drained_from else {}

    watch = Interruptions(dist.group.WORLD, {f"node-{rank}"}, draining=draining, poll_s=POLL_S)
    record: dict[str, object] = {}
    _steps_until_agreed(watch, record)
    # Outlived, the drain is answered: the rank trains on without checkpointing again for it.
    again = []
    for _ in range(20):
        time.sleep(POLL_S)
        again.append(watch.agreed() is not None)
    record["again"] = any(again)
    watch.close()
    Path(out, f"{rank}.json").write_text(json.dumps(record))


def _room_to_grow(rank: int, world: int, out: str) -> None:
    started = time.time()
    watch = Interruptions(
        dist.group.WORLD,
        {f"node-{rank}"},
        room_to_grow=(lambda: True) if rank == 0 else None,
        draining=dict,
        poll_s=POLL_S,
        grow_after_s=0.3,
    )
    record: dict[str, object] = {}
    for step in range(1, 400):
        time.sleep(0.01)
        interruption = watch.agreed()
        if interruption is not None:
            record.update(step=step, kind=interruption.kind, at=time.time())
            break
    watch.close()
    record["after"] = record.get("at", started) - started
    Path(out, f"{rank}.json").write_text(json.dumps(record))


def _records(out: Path, world: int) -> list[dict[str, object]]:
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(world)]


def test_a_drain_seen_by_one_rank_stops_every_rank_after_the_same_step_until_its_deadline(tmp_path: Path) -> None:
    run_ranks(_a_drained_node, 2, str(tmp_path))
    records = _records(tmp_path, 2)
    assert {r["kind"] for r in records} == {"preemption"}, records
    assert records[0]["step"] == records[1]["step"], f"the ranks would save different steps: {records}"
    for record in records:
        assert record["left_at"] >= record["until"], f"a rank trained on before the drain's deadline: {record}"
        assert not record["again"], f"a drain already answered asked for another checkpoint: {record}"


def test_room_for_another_worker_seen_by_rank_zero_is_agreed_by_all(tmp_path: Path) -> None:
    run_ranks(_room_to_grow, 2, str(tmp_path))
    records = _records(tmp_path, 2)
    assert [r.get("kind") for r in records] == ["growth", "growth"], records
    assert records[0]["step"] == records[1]["step"], records
    assert all(r["after"] >= 0.3 for r in records), (
        f"an attempt offered to grow before it had trained a while: {records}"
    )
