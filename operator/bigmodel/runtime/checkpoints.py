"""Training checkpoints under <storage>/checkpoints/step-<step>/, pruned to the newest few.

Every worker writes its part of a checkpoint into the step's directory (bigmodel.runtime.sharded_state); once all
have, rank 0 writes meta.json, and only then does the checkpoint exist: one marker, written last, as in
bigmodel.runtime.storage. A complete one can still be unreadable (a shard truncated on a full disk, a meta.json
edited by hand): resuming passes over it to the newest checkpoint that loads, and says which it passed over and why.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from bigmodel.runtime.errors import one_line
from bigmodel.runtime.storage import (
    Location,
    json_writer,
    read_json,
    remove_directory,
    resolve,
    staged_target,
    subdirectories,
    write_file,
)

META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step-(?P<step>\d{10})$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A completed checkpoint: where it lives and the progress and metrics it was saved with."""

    uri: str
    step: int
    epoch: int
    time: datetime
    metrics: dict[str, float]


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that could not be loaded, and why, in one line."""

    uri: str
    reason: str


@dataclass(frozen=True)
class Resume:
    """Where a run resumes: the newest checkpoint that loaded (None: from the start) and those passed over."""

    checkpoint: CheckpointInfo | None
    skipped: tuple[SkippedCheckpoint, ...] = ()


class CorruptCheckpoint(ValueError):
    """A complete checkpoint whose meta.json cannot be read as one."""


def _step_dir_name(step: int) -> str:
    return f"step-{step:010d}"


def _step_of(name: str) -> int | None:
    match = _STEP_DIR.fullmatch(name)
    return int(match["step"]) if match else None


class CheckpointStore:
    """The checkpoints of one run; storage is a local path (relative ones are made absolute) or a URI."""

    def __init__(self, storage: str, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, not {keep_last}")
        self._root = resolve(storage).child("checkpoints")
        self._keep_last = keep_last

    def directory(self, step: int) -> Location:
        """Where the checkpoint of `step` is written, by every worker."""
        return self._root.child(_step_dir_name(step))

    def clear(self, step: int) -> Location:
        """Remove what an earlier attempt left at `step` (marker first), before the workers write it anew; rank 0
        calls it, and the workers start writing only after it returned."""
        directory = self.directory(step)
        remove_directory(directory, marker=META_FILE)
        return directory

    def complete(self, *, step: int, epoch: int, metrics: dict[str, float] | None = None) -> CheckpointInfo:
        """Mark the checkpoint of `step` complete, once every worker has written its part, and prune older ones."""
        time = datetime.now(timezone.utc)
        metrics = dict(metrics or {})
        meta = {"step": step, "epoch": epoch, "time": time.isoformat(), "metrics": metrics}
        directory = self.directory(step)
        write_file(directory.child(META_FILE), json_writer(meta))
        self._prune()
        return CheckpointInfo(uri=directory.uri, step=step, epoch=epoch, time=time, metrics=metrics)

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint whose meta.json reads (its state is not loaded: see resume)."""
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def list(self) -> builtins.list[CheckpointInfo]:
        """Completed checkpoints whose meta.json reads, oldest first."""
        infos = []
        for step in sorted(self._steps()):
            try:
                info = self._read_info(step)
            except CorruptCheckpoint:
                continue
            if info is not None:
                infos.append(info)
        return infos

    def resume(self, restore: Callable[[Location], None]) -> Resume:
        """Restore the newest checkpoint that loads (`restore` reads a step directory into the live model); newer
        complete ones that do not are passed over. Every worker calls it and sees the same checkpoints."""
        skipped: builtins.list[SkippedCheckpoint] = []
        for step in sorted(self._steps(), reverse=True):
            directory = self.directory(step)
            try:
                info = self._read_info(step)
                if info is None:
                    continue
                restore(directory)
                return Resume(info, tuple(skipped))
            except FileNotFoundError:
                continue  # pruned meanwhile by another writer
            except Exception as error:  # noqa: BLE001 (torch.load, DCP and pyarrow raise anything a broken file makes)
                skipped.append(SkippedCheckpoint(directory.uri, one_line(error)))
        return Resume(None, tuple(skipped))

    def _steps(self) -> builtins.list[int]:
        return [step for name in subdirectories(self._root) if (step := _step_of(name)) is not None]

    def _read_info(self, step: int) -> CheckpointInfo | None:
        """The checkpoint at step, or None while it is incomplete (or was pruned meanwhile)."""
        directory = self.directory(step)
        try:
            meta = read_json(directory.child(META_FILE))
        except FileNotFoundError:
            return None
        except ValueError as error:  # not JSON
            raise CorruptCheckpoint(f"{META_FILE}: {one_line(error)}") from error
        try:
            return CheckpointInfo(
                uri=directory.uri,
                step=int(meta["step"]),
                epoch=int(meta["epoch"]),
                time=datetime.fromisoformat(meta["time"]),
                metrics={key: float(value) for key, value in meta["metrics"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptCheckpoint(f"{META_FILE}: {one_line(error)}") from error

    def _prune(self) -> None:
        complete = [info.step for info in self.list()]
        if not complete:
            return
        newest = complete[-1]
        doomed = set(complete[: -self._keep_last])
        for name in subdirectories(self._root):
            step = _step_of(name)
            if step is not None:
                # A step directory that never got its marker is a crashed save, once a later one completed.
                stale = step in doomed or (step not in complete and step < newest)
            else:
                target = staged_target(name)
                target_step = _step_of(target) if target is not None else None
                stale = target_step is not None and target_step <= newest
            if stale:
                remove_directory(self._root.child(name), marker=META_FILE)
