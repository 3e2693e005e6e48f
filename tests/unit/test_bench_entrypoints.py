"""Benches rot quietly, since nothing runs them: each must still start as a module and print its usage.

Only `--help` runs, so no bench gets as far as starting Ray, an operator or a server; bench.serve_generation also
runs its in-process part alone (--systems a), which needs no Ray, on a tiny model for a second.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Modules the benches share, not benches themselves.
SHARED = {"fake_cluster"}
BENCHES = sorted(
    info.name for info in pkgutil.iter_modules([str(ROOT / "bench")]) if not info.ispkg and info.name not in SHARED
)
SERVING = sorted(info.name for info in pkgutil.iter_modules([str(ROOT / "bench" / "serving")]))
# The serving bench's child processes, started the same way as a bench.
CHILDREN = ["serving.loadgen", "serving.plain_server", "serving.generation_load"]
# A bench imports torch or Ray before parsing its arguments; a busy machine takes seconds for that.
HELP_TIMEOUT_S = 120


def test_the_benches_are_found() -> None:
    expected = {
        "chaos",
        "checkpoint_stall",
        "operator_scale",
        "recovery",
        "serve_autoscale",
        "serve_generation",
        "serve_load",
        "serve_overload",
        "train_throughput",
    }
    assert expected <= set(BENCHES), BENCHES


@pytest.mark.parametrize("name", BENCHES + CHILDREN)
def test_each_bench_runs_as_a_module_from_the_repository_root(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m bench.{name} "), result.stdout


def test_every_part_of_the_serving_bench_imports_without_starting_ray() -> None:
    """In a fresh interpreter: this one may have a Ray of its own from other tests."""
    modules = ", ".join(f"bench.serving.{name}" for name in SERVING)
    probe = f"import ray, {modules}; print(ray.is_initialized())"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=HELP_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "importing a bench module started Ray"


def test_the_generation_bench_measures_the_engine_in_process_without_ray() -> None:
    tiny = [
        "--systems", "a", "--concurrency", "1,3", "--warmup", "0.2", "--duration", "0.5",
        "--gpt-layers", "1", "--gpt-heads", "2", "--gpt-embed-dim", "32", "--gpt-context", "64",
        "--requests", "8", "--prompt-bytes", "4,16", "--max-tokens", "4,16",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "bench.serve_generation", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "embedded Ray" not in out
    assert "engine and request-level generation agree on 2 of the first 2 requests" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["3"])]
    # The table's rows: concurrency, tokens/s, requests/s, TTFT p50 and p99, ITL p50 and p99, errors, CPU.
    table = [row for row in rows if len(row) == 9]
    assert [row[0] for row in table] == ["1", "3"], out
    for row in table:
        assert float(row[1]) > 0 and float(row[2]) > 0 and row[7] == "0", out
    assert "(c)/(b) tokens/s at concurrency 32 (goal >= 3x): not measured" in out
