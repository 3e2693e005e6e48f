"""Checkpoints: complete-only listing, pruning, crash leftovers, and the same rules through URIs.

What the workers write into a checkpoint is bigmodel.runtime.sharded_state's (tests/unit/test_sharded_state.py); here
a small JSON payload stands in for it, as the store's rules do not depend on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigmodel.runtime import checkpoints
from bigmodel.runtime.checkpoints import CheckpointInfo, CheckpointStore
from bigmodel.runtime.storage import Location, StorageUnwritable, json_writer, probe_writable, read_json, write_file

PAYLOAD = "payload.json"


def save(
    store: CheckpointStore, value: float, *, step: int, epoch: int, metrics: dict[str, float] | None = None
) -> CheckpointInfo:
    """What a run does: clear the step's directory, every worker writes its part, then complete it."""
    write_file(store.clear(step).child(PAYLOAD), json_writer({"value": value}))
    return store.complete(step=step, epoch=epoch, metrics=metrics)


def load(store: CheckpointStore, info: CheckpointInfo) -> float:
    return float(read_json(store.directory(info.step).child(PAYLOAD))["value"])


def resume_value(store: CheckpointStore) -> tuple[checkpoints.Resume, list[float]]:
    loaded: list[float] = []
    resume = store.resume(lambda directory: loaded.append(float(read_json(directory.child(PAYLOAD))["value"])))
    return resume, loaded


def test_save_latest_list_and_load(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    assert store.latest() is None and store.list() == []
    saved = save(store, 1.0, step=1, epoch=0, metrics={"loss": 2.5})
    save(store, 2.0, step=2, epoch=1)
    latest = store.latest()
    assert latest is not None and (latest.step, latest.epoch, latest.metrics) == (2, 1, {})
    assert [info.step for info in store.list()] == [1, 2]
    assert store.list()[0] == saved
    assert saved.uri == str(tmp_path / "checkpoints" / "step-0000000001")
    assert saved.time.tzinfo is not None
    assert load(store, saved) == 1.0
    meta = json.loads((tmp_path / "checkpoints" / "step-0000000001" / "meta.json").read_text())
    assert meta["metrics"] == {"loss": 2.5} and meta["step"] == 1


def test_keeps_only_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=2)
    for step in (5, 10, 15, 20):
        save(store, step, step=step, epoch=0)
    assert [info.step for info in store.list()] == [15, 20]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-0000000015", "step-0000000020"]


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    save(store, 1.0, step=7, epoch=0, metrics={"loss": 3.0})
    again = save(store, 2.0, step=7, epoch=0, metrics={"loss": 1.0})
    assert [info.metrics for info in store.list()] == [{"loss": 1.0}]
    assert load(store, again) == 2
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step-0000000007"]


def test_a_crashed_save_is_ignored_then_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    save(store, 2.0, step=2, epoch=0)
    root = tmp_path / "checkpoints"
    staging = root / f".step-0000000003.tmp-{'a' * 32}"
    staging.mkdir()
    (staging / "state.pt").write_bytes(b"half a checkpoint")
    (staging / "meta.json").write_text("{}")
    unmarked = root / "step-0000000004"
    unmarked.mkdir()
    (unmarked / "state.pt").write_bytes(b"half a checkpoint")
    latest = store.latest()
    assert latest is not None and latest.step == 2
    assert [info.step for info in store.list()] == [2]

    save(store, 5.0, step=5, epoch=0)
    assert sorted(path.name for path in root.iterdir()) == ["step-0000000002", "step-0000000005"]


def test_crash_leftovers_newer_than_the_latest_checkpoint_stay(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    unmarked = tmp_path / "checkpoints" / "step-0000000009"
    unmarked.mkdir(parents=True)
    save(store, 5.0, step=5, epoch=0)
    assert unmarked.exists()
    save(store, 9.0, step=9, epoch=0)
    assert [info.step for info in store.list()] == [5, 9]


def test_pruning_tolerates_directories_removed_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=1)
    save(store, 1.0, step=1, epoch=0)
    listed = checkpoints.subdirectories

    def listed_then_removed_by_another_process(parent: Location) -> list[str]:
        # Entries a concurrent pruner deleted after this listing was taken.
        return [*listed(parent), "step-0000000000", f".step-0000000000.tmp-{'c' * 32}"]

    monkeypatch.setattr(checkpoints, "subdirectories", listed_then_removed_by_another_process)
    save(store, 2.0, step=2, epoch=0)
    assert [info.step for info in store.list()] == [2]


def test_relative_storage_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    info = save(CheckpointStore("runs/demo"), 1.0, step=1, epoch=0)
    assert info.uri == str(tmp_path / "runs" / "demo" / "checkpoints" / "step-0000000001")


def test_file_uri(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/run", keep_last=1)
    save(store, 1.0, step=1, epoch=0)
    info = save(store, 2.0, step=2, epoch=0)
    assert info.uri == f"file://{tmp_path}/run/checkpoints/step-0000000002"
    assert CheckpointStore(f"file://{tmp_path}/run").latest() == info
    assert load(store, info) == 2
    assert [path.name for path in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000000002"]


def test_object_store_without_rename() -> None:
    # pyarrow's in-memory mock filesystem takes the object-store path: files written in place, meta.json last.
    store = CheckpointStore("mock:///bucket/run", keep_last=2)
    for step in (1, 2, 3):
        save(store, step, step=step, epoch=0)
    again = save(store, 30.0, step=3, epoch=1)
    assert [(info.step, info.epoch) for info in store.list()] == [(2, 0), (3, 1)]
    assert again.uri == "mock:///bucket/run/checkpoints/step-0000000003"
    assert load(store, again) == 30


def test_keep_last_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CheckpointStore(str(tmp_path), keep_last=0)


def step_dir(root: Path, step: int) -> Path:
    return root / "checkpoints" / f"step-{step:010d}"


def test_a_truncated_newest_checkpoint_is_passed_over_for_the_one_before(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    for step in (10, 20):
        save(store, step, step=step, epoch=0)
    newest = step_dir(tmp_path, 20) / PAYLOAD
    newest.write_bytes(newest.read_bytes()[:5])  # a disk that filled up mid-write
    resume, loaded = resume_value(store)
    assert resume.checkpoint is not None and resume.checkpoint.step == 10
    assert loaded == [10.0]
    (skipped,) = resume.skipped
    assert skipped.uri == str(step_dir(tmp_path, 20)) and "\n" not in skipped.reason and skipped.reason


@pytest.mark.parametrize(
    "meta", ["{not json", '{"step": 20}', "[]", '{"step": "x", "epoch": 0, "time": "", "metrics": {}}']
)
def test_an_unreadable_meta_is_no_checkpoint_to_list_and_is_passed_over(tmp_path: Path, meta: str) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    for step in (10, 20):
        save(store, step, step=step, epoch=0)
    (step_dir(tmp_path, 20) / checkpoints.META_FILE).write_text(meta)
    assert [info.step for info in store.list()] == [10]
    latest = store.latest()
    assert latest is not None and latest.step == 10
    resume, _ = resume_value(store)
    assert resume.checkpoint is not None and resume.checkpoint.step == 10
    assert [s.uri for s in resume.skipped] == [str(step_dir(tmp_path, 20))]
    assert resume.skipped[0].reason.startswith("CorruptCheckpoint: meta.json")


def test_with_no_checkpoint_that_loads_the_run_starts_over_saying_why(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), keep_last=3)
    save(store, 10, step=10, epoch=0)
    (step_dir(tmp_path, 10) / PAYLOAD).write_bytes(b"")
    resume, loaded = resume_value(store)
    assert (resume.checkpoint, loaded, len(resume.skipped)) == (None, [], 1)
    assert resume_value(CheckpointStore(str(tmp_path / "empty"))) == (checkpoints.Resume(None, ()), [])


def test_storage_that_cannot_be_written_is_found_before_training(tmp_path: Path) -> None:
    probe_writable(str(tmp_path / "fine"))
    assert list((tmp_path / "fine").iterdir()) == [], "the probe leaves nothing behind"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageUnwritable) as refused:
        probe_writable(str(blocker / "checkpoints"))
    message = str(refused.value)
    assert message.startswith(f"checkpoint storage {blocker / 'checkpoints'} cannot be written: ")
    assert "\n" not in message
