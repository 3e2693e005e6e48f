"""A run's progress recorder stays on the driver's node, so losing a worker node never takes it down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

RECORDERS = 12


def test_the_progress_recorder_lives_on_the_drivers_node_not_on_a_worker() -> None:
    # Left to Ray's scheduler, 2 of 6 and 8 of 12 landed on a worker node in two runs here.
    script = Path(__file__).with_name("recorder_placement.py")
    done = subprocess.run(
        [sys.executable, str(script), str(RECORDERS)], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"the placement script failed:\n{done.stderr[-3000:]}"
    placed = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(placed["recorders"]) == RECORDERS, placed
    elsewhere = [node for node in placed["recorders"] if node != placed["driver"]]
    assert elsewhere == [], f"{len(elsewhere)} of {RECORDERS} recorders were placed on a worker node"
