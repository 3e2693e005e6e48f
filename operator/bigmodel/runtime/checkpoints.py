"""Training checkpoints under <storage>/checkpoints/step-<step>/, pruned to the newest few.

A checkpoint is complete once its meta.json exists; see bigmodel.runtime.storage for why that is enough. A complete
one can still be unreadable (a truncated state.pt on a full disk, a meta.json edited by hand): resuming passes over
it to the newest checkpoint that loads, and says which it passed over and why.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bigmodel.runtime.storage import (
    json_writer,
    read_json,
    read_torch,
    remove_directory,
    resolve,
    staged_target,
    subdirectories,
    torch_writer,
    write_directory,
)

STATE_FILE = "state.pt"
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
    state: dict[str, Any] | None
    skipped: tuple[SkippedCheckpoint, ...] = ()


class CorruptCheckpoint(ValueError):
    """A complete checkpoint whose meta.json cannot be read as one."""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


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

    def save(
        self, state: dict[str, Any], *, step: int, epoch: int, metrics: dict[str, float] | None = None
    ) -> CheckpointInfo:
        time = datetime.now(timezone.utc)
        metrics = dict(metrics or {})
        meta = {"step": step, "epoch": epoch, "time": time.isoformat(), "metrics": metrics}
        directory = write_directory(
            self._root,
            _step_dir_name(step),
            [(STATE_FILE, torch_writer(state)), (META_FILE, json_writer(meta))],
        )
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

    def resume(self) -> Resume:
        """The newest checkpoint that loads, with its state; newer complete ones that do not are passed over."""
        skipped: builtins.list[SkippedCheckpoint] = []
        for step in sorted(self._steps(), reverse=True):
            uri = self._root.child(_step_dir_name(step)).uri
            try:
                info = self._read_info(step)
                if info is None:
                    continue
                return Resume(info, self.load(info), tuple(skipped))
            except FileNotFoundError:
                continue  # pruned meanwhile by another writer
            except Exception as error:  # noqa: BLE001 (torch.load and pyarrow raise anything a broken file makes)
                skipped.append(SkippedCheckpoint(uri, _one_line(error)))
        return Resume(None, None, tuple(skipped))

    def load(self, info: CheckpointInfo) -> dict[str, Any]:
        state: dict[str, Any] = read_torch(self._root.child(_step_dir_name(info.step)).child(STATE_FILE))
        return state

    def _steps(self) -> builtins.list[int]:
        return [step for name in subdirectories(self._root) if (step := _step_of(name)) is not None]

    def _read_info(self, step: int) -> CheckpointInfo | None:
        """The checkpoint at step, or None while it is incomplete (or was pruned meanwhile)."""
        directory = self._root.child(_step_dir_name(step))
        try:
            meta = read_json(directory.child(META_FILE))
        except FileNotFoundError:
            return None
        except ValueError as error:  # not JSON
            raise CorruptCheckpoint(f"{META_FILE}: {_one_line(error)}") from error
        try:
            return CheckpointInfo(
                uri=directory.uri,
                step=int(meta["step"]),
                epoch=int(meta["epoch"]),
                time=datetime.fromisoformat(meta["time"]),
                metrics={key: float(value) for key, value in meta["metrics"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptCheckpoint(f"{META_FILE}: {_one_line(error)}") from error

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
