"""The operator's memory of Kubernetes objects: what the watches and its own writes last said about each.

One `ObjectCache` per resource. Two sources feed it, in any order: watch events (and relists) and the answers to the
operator's own writes (a POST answers the created object, a DELETE the deleted or Terminating one, a PATCH the new
one). The newer version of an object always wins, so a pass sees what the operator itself just did even before its
watch says so, and a late watch event or a slow write answer never brings an older version back. Deleted objects
leave a tombstone for a while, for the same reason.

Pure: no I/O. The objects it hands out are shared, never copied: callers must not change them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]
"""An object's namespace and name."""

TOMBSTONE_S = 300.0
"""How long a deleted object's resourceVersion is kept: longer than any write answer or watch event can lag."""


def newer(candidate: str | None, current: str | None) -> bool:
    """Whether `candidate` is a later resourceVersion than `current`.

    etcd's versions are integers, compared as such. Kubernetes calls them opaque, so any other pair can only be told
    apart, not ordered: a different version is taken as newer, since watches deliver changes in order.
    """
    if candidate is None or current is None:
        return candidate is not None
    if candidate.isdigit() and current.isdigit():
        return int(candidate) > int(current)
    return candidate != current


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _version(obj: Mapping[str, Any]) -> str | None:
    version = obj["metadata"].get("resourceVersion")
    return str(version) if version is not None else None


class ObjectCache:
    """The objects of one resource that carry `selector`'s labels, indexed by the values of `indexed` labels.

    A namespace (or None: all of them) is covered once a full listing of it was replayed into the cache: from then
    on, what the cache does not hold does not exist there.
    """

    def __init__(
        self,
        selector: Mapping[str, str] | None = None,
        indexed: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._selector = dict(selector or {})
        self._indexed = tuple(indexed)
        self._clock = clock
        self._objects: dict[Key, Obj] = {}
        self._index: dict[tuple[str, str, str], set[str]] = {}
        self._tombstones: dict[Key, tuple[str | None, float]] = {}
        self._swept = clock()
        self._covered: set[str | None] = set()

    def __len__(self) -> int:
        return len(self._objects)

    def covers(self, namespace: str) -> bool:
        return None in self._covered or namespace in self._covered

    def cover(self, namespace: str | None) -> None:
        """Say that the cache holds everything of `namespace` (None: of all namespaces) from now on."""
        self._covered.add(namespace)

    def get(self, namespace: str, name: str) -> Obj | None:
        return self._objects.get((namespace, name))

    def select(self, namespace: str, labels: Mapping[str, str]) -> list[Obj] | None:
        """The objects with all these labels, by name; None when the cache cannot tell (the selector is not one of
        its indexed labels, or asks for objects that the cache does not keep)."""
        if any(labels.get(key) != value for key, value in self._selector.items()):
            return None
        label = next((label for label in self._indexed if label in labels), None)
        if label is None:
            return None
        names = self._index.get((namespace, label, labels[label]), set())
        found = [self._objects[(namespace, name)] for name in sorted(names)]
        return [obj for obj in found if _has_labels(obj, labels)]

    def put(self, obj: Obj) -> bool:
        """An object as the server last answered it; whether the cache changed (False: it held that or newer)."""
        key, version = key_of(obj), _version(obj)
        current = self._objects.get(key)
        if current is not None and not newer(version, _version(current)):
            return False
        tombstone = self._tombstones.get(key)
        if current is None and tombstone is not None and not newer(version, tombstone[0]):
            return False
        if not _has_labels(obj, self._selector):  # our labels were taken off: it left what the cache keeps
            return self._drop(key, version)
        if "managedFields" in obj["metadata"]:
            # The server's record of who set which field: often as large as the rest of the object, read by nothing
            # here, and a thousand jobs' worth of it is memory for nothing (client-go's informers drop it too).
            obj = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "managedFields"}}
        self._tombstones.pop(key, None)
        self._unindex(key)
        self._objects[key] = obj
        for label in self._indexed:
            value = (obj["metadata"].get("labels") or {}).get(label)
            if value is not None:
                self._index.setdefault((key[0], label, value), set()).add(key[1])
        return True

    def remove(self, obj: Mapping[str, Any]) -> bool:
        """A deleted object, in its last state; whether the cache changed."""
        key, version = key_of(obj), _version(obj)
        current = self._objects.get(key)
        if current is not None and newer(_version(current), version):
            return False  # it was deleted and made again since
        return self._drop(key, version)

    def replace(self, namespace: str | None, items: list[Obj], version: str) -> list[Obj]:
        """A full listing of `namespace` (None: all) at resourceVersion `version`; the objects that changed."""
        changed = [obj for obj in items if self.put(obj)]
        listed = {key_of(obj) for obj in items}
        for key, obj in list(self._objects.items()):
            # Gone, unless it is newer than the listing: the answer to a write made after the list was taken.
            if namespace in (None, key[0]) and key not in listed and not newer(_version(obj), version):
                self._drop(key, version)
                changed.append(obj)
        self.cover(namespace)
        return changed

    def _drop(self, key: Key, version: str | None) -> bool:
        now = self._clock()
        if now - self._swept > TOMBSTONE_S:  # one sweep per period, not one per deletion
            self._tombstones = {k: t for k, t in self._tombstones.items() if now - t[1] < TOMBSTONE_S}
            self._swept = now
        tombstone = self._tombstones.get(key)
        if tombstone is None or newer(version, tombstone[0]):
            self._tombstones[key] = (version, now)
        if key not in self._objects:
            return False
        self._unindex(key)
        del self._objects[key]
        return True

    def _unindex(self, key: Key) -> None:
        current = self._objects.get(key)
        if current is None:
            return
        for label in self._indexed:
            value = (current["metadata"].get("labels") or {}).get(label)
            names = self._index.get((key[0], label, value)) if value is not None else None
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._index[(key[0], label, value)]


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    own = obj["metadata"].get("labels") or {}
    return all(own.get(key) == value for key, value in labels.items())
