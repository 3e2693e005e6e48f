"""The benchmark's child processes (the load generator, the plain server) and the CPU time of processes."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Children run as modules of this package from the repository root, as the benchmark itself does.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


class Child:
    """`python -m bench.serving.<module>` in another process; its stdout lines (JSON records) are read by a thread."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = f"bench.serving.{module}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.name, *args],
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            # Its own session: Ctrl-C reaches this process only, which then stops the child in order.
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def record(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON record; raises if none comes in time or the child ended."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no answer from {self.name} within {timeout_s:.0f} s") from None
            if line is None:
                raise RuntimeError(f"{self.name} ended with code {self.process.wait()}")
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)

    def poll(self) -> dict[str, Any] | None:
        """The next JSON record if one has come, else None at once; raises if the child ended."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return None
            if line is None:
                raise RuntimeError(f"{self.name} ended with code {self.process.wait()}")
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def child(module: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Child]:
    process = Child(module, *args, env=env)
    try:
        yield process
    finally:
        process.stop()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far; a process gone counts nothing."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total
