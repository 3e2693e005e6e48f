"""Losing a Ray Train worker on purpose, as the end-to-end tests of resuming do: the process is SIGKILLed, as the
kernel's OOM killer or a lost node would end it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil

KILL_WITHIN_S = 240.0


def train_worker_pids() -> list[int]:
    """The Ray Train worker processes on this machine, oldest first."""
    # info[...]: a process that exited meanwhile reads None.
    processes = psutil.process_iter(["pid", "cmdline"])
    return [p.info["pid"] for p in processes if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


@contextmanager
def kill_a_train_worker_when(ready: Callable[[], Any]) -> Iterator[list[tuple[Any, int]]]:
    """While the block runs, a thread kills the newest Ray Train worker once `ready()` returns something truthy,
    once, and records (what ready returned, the pid) in the list it yields; it gives up after KILL_WITHIN_S."""
    done, kills = threading.Event(), []

    def watch() -> None:
        deadline = time.monotonic() + KILL_WITHIN_S
        while time.monotonic() < deadline and not done.is_set():
            pids = train_worker_pids()
            reason = ready() if pids else None
            if reason:
                os.kill(pids[-1], signal.SIGKILL)
                kills.append((reason, pids[-1]))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=watch, daemon=True)
    killer.start()
    try:
        yield kills
    finally:
        done.set()
        killer.join(timeout=10)
