"""A byte corpus that ships with every Python: the standard library's own source files."""

from __future__ import annotations

import os
import sysconfig
from functools import lru_cache
from pathlib import Path

# Installed packages live inside the stdlib directory on many layouts but differ between images.
_THIRD_PARTY = {"site-packages", "dist-packages"}


def stdlib_sources() -> list[Path]:
    """The standard library's .py files in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in _THIRD_PARTY]
        found.extend(Path(directory, name) for name in files if name.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


@lru_cache(maxsize=1)
def stdlib_corpus(max_bytes: int) -> bytes:
    """Up to max_bytes of the standard library's source, concatenated (all of it, when it is smaller)."""
    chunks: list[bytes] = []
    size = 0
    for path in stdlib_sources():
        if size >= max_bytes:
            break
        chunk = path.read_bytes()[: max_bytes - size]
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
