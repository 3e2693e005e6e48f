"""The quick `bigmodel` commands, run in-process: validate and crds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigmodel.api.crd import render_crds
from bigmodel.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_accepts_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    examples = sorted(str(path) for path in (ROOT / "examples").glob("*.yaml"))
    assert main(["validate", *examples]) == 0
    out = capsys.readouterr().out
    assert out.count("valid ") == len(examples), out


def test_validate_reports_each_bad_file_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelJob\nmetadata: {name: bad}\n"
        "spec: {workload: {builtin: {task: digits}}, workers: {replicas: -1}}\n"
    )
    assert main(["validate", str(ROOT / "examples/digits.yaml"), str(bad)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("invalid") and "spec.workers.replicas" in line for line in lines), lines


def test_crds_command_writes_what_the_models_generate(tmp_path: Path) -> None:
    assert main(["crds", "--output", str(tmp_path)]) == 0
    written = {path.name for path in tmp_path.glob("*.yaml")}
    assert written == set(render_crds()), written
