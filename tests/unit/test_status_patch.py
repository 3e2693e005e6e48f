"""Status writes: compared as the server keeps a status, and sent as the merge patch of what changed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from bigmodel.api.common import Condition
from bigmodel.api.job import BigModelJobStatus, CheckpointRef
from bigmodel.controller.stored_status import merge_patch, status_patch
from tests.support.apiserver import merge_patch as apply_merge_patch

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def stored_after(status: BigModelJobStatus, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the server keeps once the status patch (if any) was applied to `stored`."""
    patch = status_patch(status, stored)
    return stored if patch is None else apply_merge_patch(stored or {}, patch)


def running() -> BigModelJobStatus:
    return BigModelJobStatus(
        phase="Running",
        cluster_generation=1,
        ray_job_id="bigmodel-1234-g1",
        start_time=NOW,
        conditions=[Condition(type="Running", status="True", reason="Running", last_transition_time=NOW)],
    )


def test_a_status_written_once_is_never_written_again() -> None:
    first = status_patch(running(), None)
    assert first is not None and None not in first.values(), "unset fields are left out, not sent as nulls"
    stored = apply_merge_patch({}, first)
    assert status_patch(running(), stored) is None


def test_the_patch_carries_what_changed_and_removes_what_went_away() -> None:
    before = running()
    before.last_checkpoint = CheckpointRef(path="/c/step-10", step=10, epoch=0)
    stored = stored_after(before, None)
    after = running()
    after.progress.step = 20
    after.ray_job_id = None
    patch = status_patch(after, stored)
    assert patch == {"lastCheckpoint": None, "rayJobId": None, "progress": {"step": 20}}
    assert stored_after(after, stored) == after.model_dump(by_alias=True, mode="json", exclude_none=True)


def test_a_merge_patch_replaces_lists_whole_and_merges_objects() -> None:
    old = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 3, "d": {"e": 1}}
    new = {"a": {"x": 1, "y": 3, "z": 4}, "b": [1], "d": {}}
    assert merge_patch(old, new) == {"a": {"y": 3, "z": 4}, "b": [1], "c": None, "d": {"e": None}}
    assert apply_merge_patch(old, merge_patch(old, new)) == new
    assert merge_patch(new, new) == {}


def test_an_unreadable_stored_status_is_replaced_whole() -> None:
    patch = status_patch(running(), "garbage")
    assert patch == running().model_dump(by_alias=True, mode="json", exclude_none=True)
