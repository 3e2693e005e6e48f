"""A short chaos run (bench/chaos.py, small): the real operator, with API faults, a SIGKILL and crashed pods.

What a user counts on, whatever the weather: every job finishes, each lost head is one restart, each lost worker one
replacement, and no run is submitted twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, run_chaos
from bench.fake_cluster import log_errors

SMALL = ChaosConfig(
    jobs=3,
    watch_drops=1,
    kills=1,
    head_failures=1,
    worker_failures=1,
    steady_s=2.0,
    chaos_s=12.0,
    total_steps=150,
    steps_per_s=10.0,
    checkpoint_every=10,
    timeout_s=30.0,
)


@pytest.mark.timeout(120)
def test_jobs_survive_a_short_chaos_run_and_every_failure_is_counted_once(tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    figures, stopped = run_chaos(SMALL, log)
    context = f"{figures}\n{log_errors(log)}"
    assert not stopped, f"{stopped}\n{context}"
    assert figures.head_failures == 1 and figures.worker_failures == 1, f"failures not injected: {context}"
    assert figures.succeeded == SMALL.jobs, context
    assert figures.restarts == figures.head_failures, context
    assert figures.replaced == figures.worker_failures, context
    assert not figures.accepted_twice and not figures.overlapping, context
    assert sum(figures.api_faults.values()) > 0, context
