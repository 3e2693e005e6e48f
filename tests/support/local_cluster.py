"""The whole product on this machine: API emulator, local kubelet, the real operator, pods running real Ray.

Shared by the end-to-end tests and bench/recovery.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tests.support.emulator import PROJECT_CRDS, Emulator, running_emulator
from tests.support.kubelet import LocalKubelet
from tests.support.operator import running_operator


@dataclass(frozen=True)
class LocalCluster:
    emulator: Emulator
    kubelet: LocalKubelet


@contextmanager
def local_cluster(work_dir: Path, poll_running_s: float = 1.0) -> Iterator[LocalCluster]:
    """Everything up until the block ends. This interpreter's environment plays the runtime image."""
    image_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with mock.patch.dict(os.environ, image_env):
        with running_emulator(PROJECT_CRDS) as emulator:
            with LocalKubelet(emulator.url, work_dir / "pod-logs") as kubelet:
                with running_operator(emulator, None, poll_running_s=poll_running_s):
                    yield LocalCluster(emulator, kubelet)
