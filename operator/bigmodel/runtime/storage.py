"""Run storage, a local directory or an object store, behind one pyarrow filesystem API.

Directories are written so that a reader never mistakes a half-written one for a complete one: the last file written
is the completion marker, and on local filesystems the directory is staged under a hidden name and renamed into place.
Object stores have no rename, so there the marker-last rule alone carries completeness.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.fs as pafs
import torch

Writer = Callable[[IO[bytes]], None]

_COPY_CHUNK = 8 << 20
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?:tmp|trash)-[0-9a-f]{32}$")


@dataclass(frozen=True)
class Location:
    """A path on a filesystem, with the URI (or absolute local path) that names it to other processes."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def child(self, name: str) -> Location:
        path = f"{self.path.rstrip('/')}/{name}"
        if "://" not in self.uri:
            return Location(self.filesystem, path, path)
        # Options such as ?region=... stay at the end of the URI.
        base, _, query = self.uri.partition("?")
        uri = f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")
        return Location(self.filesystem, path, uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)


def resolve(storage: str) -> Location:
    """A storage string as a Location: a URI (s3://, gs://, file://, ...) or a local path, made absolute."""
    if "://" in storage:
        filesystem, path = pafs.FileSystem.from_uri(storage)
        return Location(filesystem, path, storage)
    path = os.path.abspath(os.path.expanduser(storage))
    return Location(pafs.LocalFileSystem(), path, path)


def exists(location: Location) -> bool:
    return location.filesystem.get_file_info(location.path).type != pafs.FileType.NotFound


def write_directory(parent: Location, name: str, files: Sequence[tuple[str, Writer]]) -> Location:
    """Write files into parent/name, replacing what was there; the last file is the completion marker."""
    target = parent.child(name)
    parent.filesystem.create_dir(parent.path, recursive=True)
    if not target.is_local:
        # Without this, a re-save would show the old marker next to half-written new files.
        remove_directory(target, marker=files[-1][0])
        _write_files(target, files)
        return target
    staging = parent.child(f".{name}.tmp-{uuid.uuid4().hex}")
    _write_files(staging, files)
    if exists(target):
        # rename(2) refuses a non-empty destination, so the old copy steps aside first.
        trash = parent.child(f".{name}.trash-{uuid.uuid4().hex}")
        parent.filesystem.move(target.path, trash.path)
        parent.filesystem.move(staging.path, target.path)
        remove_directory(trash)
    else:
        parent.filesystem.move(staging.path, target.path)
    return target


def write_file(target: Location, write: Writer) -> None:
    """Write one file so that it is whole or absent: locally staged under a hidden name and renamed into place (an
    object store's single PUT is whole by itself)."""
    parent, _, name = target.path.rpartition("/")
    target.filesystem.create_dir(parent, recursive=True)
    if not target.is_local:
        with target.filesystem.open_output_stream(target.path) as stream:
            write(stream)
        return
    staging = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
    with target.filesystem.open_output_stream(staging) as stream:
        write(stream)
    target.filesystem.move(staging, target.path)


def _write_files(directory: Location, files: Sequence[tuple[str, Writer]]) -> None:
    directory.filesystem.create_dir(directory.path, recursive=True)
    for file_name, write in files:
        target = directory.child(file_name)
        if "/" in file_name:  # a file in a subdirectory, such as a tokenizer's additional_chat_templates/
            directory.filesystem.create_dir(target.path.rpartition("/")[0], recursive=True)
        with directory.filesystem.open_output_stream(target.path) as stream:
            write(stream)


def remove_directory(location: Location, marker: str | None = None) -> None:
    """Delete a directory, its marker first so that it stops looking complete; a missing one is fine."""
    try:
        if marker is not None:
            location.filesystem.delete_file(location.child(marker).path)
    except FileNotFoundError:
        pass
    try:
        location.filesystem.delete_dir(location.path)
    except FileNotFoundError:
        pass


def subdirectories(parent: Location) -> list[str]:
    """Names of the directories directly under parent (none when parent does not exist)."""
    selector = pafs.FileSelector(parent.path, allow_not_found=True)
    return [
        info.base_name for info in parent.filesystem.get_file_info(selector) if info.type == pafs.FileType.Directory
    ]


def files_in(parent: Location, *, recursive: bool = False) -> list[pafs.FileInfo]:
    """The files under parent (none when parent does not exist), with their paths, sizes and modification times."""
    selector = pafs.FileSelector(parent.path, allow_not_found=True, recursive=recursive)
    return [info for info in parent.filesystem.get_file_info(selector) if info.type == pafs.FileType.File]


def copy_to_local(source: Location, destination: str | os.PathLike[str]) -> None:
    """Copy one file of any filesystem to a local path, a chunk at a time."""
    with source.filesystem.open_input_stream(source.path) as stream, open(destination, "wb") as target:
        shutil.copyfileobj(stream, target, _COPY_CHUNK)


def staged_target(entry_name: str) -> str | None:
    """The directory name a staging or trash directory was made for, or None for any other entry."""
    match = _STAGED.fullmatch(entry_name)
    return match["name"] if match else None


def torch_writer(obj: Any) -> Writer:
    return lambda stream: torch.save(obj, stream)


def json_writer(document: dict[str, Any]) -> Writer:
    return lambda stream: stream.write(json.dumps(document, indent=2, sort_keys=True).encode())


def local_file_writer(path: str | os.PathLike[str]) -> Writer:
    """Copies a local file into the stream, a chunk at a time."""

    def write(stream: IO[bytes]) -> None:
        with open(path, "rb") as source:
            shutil.copyfileobj(source, stream, _COPY_CHUNK)

    return write


class StorageUnwritable(RuntimeError):
    """The run's storage refused a write; str() is one line naming the storage and the reason."""


def probe_writable(storage: str) -> None:
    """Write and remove a small file under storage, so that storage which cannot take a checkpoint is found before
    training starts rather than at the first save, an interval into each of the run's attempts."""
    root = resolve(storage)
    probe = root.child(f".write-probe-{uuid.uuid4().hex}")
    try:
        root.filesystem.create_dir(root.path, recursive=True)
        with root.filesystem.open_output_stream(probe.path) as stream:
            stream.write(b"bigmodel")
        root.filesystem.delete_file(probe.path)
    except OSError as error:  # pyarrow raises OSError subclasses: permission, read-only, no space, no bucket
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageUnwritable(f"checkpoint storage {root.uri} cannot be written: {reason}") from None


def read_torch(location: Location) -> Any:
    with location.filesystem.open_input_file(location.path) as stream:
        return torch.load(stream, map_location="cpu", weights_only=True)


def read_bytes(location: Location) -> bytes:
    with location.filesystem.open_input_stream(location.path) as stream:
        data: bytes = stream.read()
    return data


def read_json(location: Location) -> dict[str, Any]:
    with location.filesystem.open_input_stream(location.path) as stream:
        document: dict[str, Any] = json.loads(stream.read())
    return document
