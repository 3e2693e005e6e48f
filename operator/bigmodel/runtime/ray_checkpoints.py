"""The checkpoints a user loop hands to `ray.train.report`, which Ray Train stores as `<run>/checkpoint_<time>/`.

Ray Train keeps the newest `keepLast` of those it registered (`CheckpointConfig(num_to_keep=...)`), but a worker
that fails mid-report leaves the checkpoint it was uploading behind, never registered and so never removed. Once a
run finished, every checkpoint directory Ray Train does not keep goes.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.fs
from ray.train import Result

CHECKPOINT_PREFIX = "checkpoint_"


def unkept(directories: Iterable[str], kept: Iterable[str]) -> list[str]:
    """The checkpoint directories (full paths) that are not among `kept`."""
    keep = {path.rstrip("/") for path in kept}
    return sorted(
        path
        for path in directories
        if path.rstrip("/").rsplit("/", 1)[-1].startswith(CHECKPOINT_PREFIX) and path.rstrip("/") not in keep
    )


def remove_unkept(result: Result) -> list[str]:
    """Remove the run's checkpoint directories that Ray Train does not keep; returns their paths."""
    filesystem = result.filesystem
    listed = filesystem.get_file_info(pyarrow.fs.FileSelector(result.path, allow_not_found=True))
    directories = [info.path for info in listed if info.type == pyarrow.fs.FileType.Directory]
    orphans = unkept(directories, (checkpoint.path for checkpoint, _ in result.best_checkpoints or []))
    for path in orphans:
        filesystem.delete_dir(path)
    return orphans
