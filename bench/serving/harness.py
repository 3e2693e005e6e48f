"""What every measurement of the serving benchmark shares: the run's settings, its log lines and load runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from bench.serving.children import child, cpu_seconds
from bench.serving.loadgen import JSON_HEADERS, REQUEST_TIMEOUT_S

LOOPBACK = "127.0.0.1"
MODEL_NAME = "bench"
# A generous bound on the start of a child process on a busy 2-core machine; a stuck one fails the run.
START_TIMEOUT_S = 120.0
POLL_S = 0.2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(POLL_S)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def per_request_ms(cpu_s: float, answered: int) -> float:
    return cpu_s / max(answered, 1) * 1000


def point_text(point: dict[str, Any]) -> str:
    errors = f"  errors {point['errors']}" if point["errors"] else ""
    cpu = f"  server CPU {point['server_cpu_ms']:5.2f} ms/req" if "server_cpu_ms" in point else ""
    return (
        f"{point['throughput']:8.1f} req/s  p50 {point['p50_ms']:7.1f} ms  p99 {point['p99_ms']:7.1f} ms{cpu}{errors}"
    )


@dataclass
class Bench:
    args: argparse.Namespace
    model_uri: str
    body: str
    started: float

    def say(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {line}", flush=True)

    def say_point(self, label: str, point: dict[str, Any]) -> None:
        where = f"{point['rate']:.1f} req/s offered" if "rate" in point else f"concurrency {point['concurrency']:3d}"
        self.say(f"{label:<13} {where}: {point_text(point)}")

    def check_answer(self, url: str) -> None:
        """One request before any load: the server at url answers this run's request with one prediction."""
        request = urllib.request.Request(url, data=self.body.encode(), headers=JSON_HEADERS)
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            assert len(json.loads(response.read())["predictions"]) == 1

    def load_spec(self, url: str, **spec: Any) -> dict[str, Any]:
        """The load generator's spec: this run's request, warm-up, duration and concurrency unless spec overrides
        them; an open loop when spec has a rate."""
        return {
            "url": url,
            "body": self.body,
            "warmup": self.args.warmup,
            "duration": self.args.duration,
            "mode": "open" if "rate" in spec else "closed",
            "concurrency": self.args.concurrency,
            "max_in_flight": 4096,
            **spec,
        }

    def load(self, url: str, label: str, server_pids: list[int], **spec: Any) -> list[dict[str, Any]]:
        """Points from a load generator process against url; closed loop unless spec has a rate.

        Each point also gets the CPU time that the server's processes and the generator spent per answered request.
        """
        spec = self.load_spec(url, **spec)
        points = []
        per_point = spec["warmup"] + spec["duration"] + REQUEST_TIMEOUT_S
        with child("loadgen", json.dumps(spec)) as generator:
            generator.record(START_TIMEOUT_S)
            client_pids = [generator.process.pid]
            marks = (0.0, 0.0)
            while (record := generator.record(per_point))["event"] != "done":
                if record["event"] == "measuring":
                    marks = (cpu_seconds(server_pids), cpu_seconds(client_pids))
                    continue
                record["server_cpu_ms"] = per_request_ms(cpu_seconds(server_pids) - marks[0], record["requests"])
                record["client_cpu_ms"] = per_request_ms(cpu_seconds(client_pids) - marks[1], record["requests"])
                points.append(record)
                self.say_point(label, record)
        return points
