"""The quick `bigmodel` commands, run in-process: validate and crds; and train and serve where Ray is missing."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.mark.parametrize(
    ("command", "args"),
    [("train", ["examples/digits.yaml"]), ("serve", ["examples/service-digits.yaml", "--model", "."])],
)
def test_train_and_serve_without_the_runtime_extra_say_how_to_install_it(command: str, args: list[str]) -> None:
    """The operator image (and a plain `pip install bigmodel-operator`) has no Ray or torch: one line, exit 2."""
    hide = "import sys; sys.modules.update(dict.fromkeys(['ray', 'torch'])); from bigmodel.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", hide + f"sys.exit(main({[command, *args]!r}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bigmodel: `bigmodel {command}` runs Ray and PyTorch on this machine, and "
        f"{'torch' if command == 'serve' else 'ray'} is not installed: pip install 'bigmodel-operator[runtime]'"
    ]
