"""The quick `bigmodel` commands, run in-process: validate and crds; train and serve where Ray is missing; and what
serve reads of a model directory before it starts Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bigmodel.api.crd import render_crds
from bigmodel.cli import CliError, _read_exported, main
from bigmodel.runtime.artifacts import export_model
from bigmodel.runtime.tasks import build_model_from_config
from tests.support.hf_models import write_tiny_causal_lm
from tests.support.models import tiny_gpt_config

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
    hide = "import sys; sys.modules.update(dict.fromkeys(['ray', 'torch'])); from bigmodel.cli import CliError, _read_exported, main; "
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


def test_serve_reads_a_hugging_face_directory_as_a_causal_lm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_causal_lm(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    uri, description = _read_exported("tiny", "check --model")
    assert uri == str(tmp_path / "tiny"), "replicas need an absolute path"
    assert description.task == "causal-lm" and description.exported.startswith("sha256:")


def test_serve_names_what_a_model_directory_lacks_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=rf"^no exported model at {tmp_path} \(no config.json\): check --model$"):
        _read_exported(str(tmp_path), "check --model")

    ours = export_model(str(tmp_path / "run"), build_model_from_config(tiny_gpt_config()), tiny_gpt_config(), {})
    (Path(ours) / "weights.pt").unlink()
    with pytest.raises(CliError, match=rf"^no exported model at {ours} \(no weights.pt\): check --model$"):
        _read_exported(ours, "check --model")

    hugging_face = write_tiny_causal_lm(tmp_path / "tiny")
    (hugging_face / "tokenizer.json").unlink()
    with pytest.raises(
        CliError, match=rf"^{hugging_face}: no tokenizer \(none of tokenizer.json, .*\): check --model$"
    ):
        _read_exported(str(hugging_face), "check --model")
