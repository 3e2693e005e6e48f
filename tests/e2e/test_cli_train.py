"""`bigmodel train` as a user runs it: the real console script, an embedded Ray cluster, files on disk."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bigmodel.api.manifests import load_manifest
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.checkpoints import CheckpointStore
from bigmodel.runtime.sharded_state import SHARDS_DIR
from bigmodel.runtime.tasks import make_task

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIGMODEL = [sys.executable, "-m", "bigmodel.cli"]


def _train(*args: str, timeout: float = 300, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run(
        [*BIGMODEL, "train", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_train_example_end_to_end_then_resume(tmp_path: Path) -> None:
    storage = tmp_path / "digits"
    first = _train("examples/digits.yaml", "--storage", str(storage), "--num-cpus", "2")
    assert first.returncode == 0, f"bigmodel train failed:\n{first.stdout}\n{first.stderr}"
    assert "BigModelJob digits: Succeeded" in first.stdout, first.stdout
    assert "val accuracy" in first.stdout and "model" in first.stdout, first.stdout

    job = load_manifest(ROOT / "examples/digits.yaml")
    checkpoints = CheckpointStore(str(storage)).list()
    assert [c.epoch for c in checkpoints] == [5, 6, 7], "one checkpoint per epoch, the last three kept"
    model, config = load_model(str(storage / "model"))
    accuracy = make_task(job.spec.workload.builtin).evaluate(model)["val_accuracy"]
    assert accuracy > 0.9, f"the exported digits model is only {accuracy:.2%} accurate on held-out digits"

    # A shard of the newest checkpoint cut short, as a disk that filled up mid-write leaves it: the run goes on from
    # the one before, and says which it passed over.
    newest = max((Path(checkpoints[-1].uri) / SHARDS_DIR).glob("*.distcp"), key=lambda path: path.stat().st_size)
    newest.write_bytes(newest.read_bytes()[:100])
    again = _train("examples/digits.yaml", "--storage", str(storage), "--num-cpus", "2")
    assert again.returncode == 0, f"second run failed:\n{again.stdout}\n{again.stderr}"
    previous_step = checkpoints[-2].step
    assert re.search(rf"resumed from\W+step {previous_step}\b", again.stdout), (
        f"the second run did not resume from step {previous_step}:\n{again.stdout}"
    )
    assert re.search(rf"skipped checkpoint\W+{re.escape(checkpoints[-1].uri)}: would not load", again.stdout), (
        again.stdout
    )


def test_user_loop_example_shows_progress_keeps_keep_last_and_resumes_on_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example's module is found as a user's is: on PYTHONPATH, which the embedded Ray's workers inherit.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    example = yaml.safe_load((ROOT / "examples/user-loop.yaml").read_text())
    config = example["spec"]["workload"]["entrypoint"]["config"]
    keep_last = example["spec"]["checkpoint"]["keepLast"]
    steps_per_epoch = config["samples"] // example["spec"]["workers"]["replicas"] // config["batchSize"]
    epochs = config["epochs"]
    config["epochs"] = 2  # a first run of two epochs, which the example's run resumes
    half = tmp_path / "half.yaml"
    half.write_text(yaml.safe_dump(example))
    storage = tmp_path / "user-loop"

    def kept() -> list[Path]:
        return sorted(path for path in (storage / "ray" / "user-loop").glob("checkpoint_*") if path.is_dir())

    first = _train(str(half), "--storage", str(storage), "--num-cpus", "2")
    assert first.returncode == 0, f"bigmodel train failed:\n{first.stdout}\n{first.stderr}"
    done = 2 * steps_per_epoch
    assert re.search(rf"\b100%\s+epoch 2/2\s+step {done}/{done}\s+loss \d", first.stdout), first.stdout
    assert re.search(rf"steps\W+{done}/{done} over 2 epoch\(s\)", first.stdout), first.stdout
    assert re.search(r"loss\W+0\.\d{4}", first.stdout), first.stdout
    assert len(kept()) == keep_last, f"keepLast {keep_last}, kept {kept()}"

    again = _train("examples/user-loop.yaml", "--storage", str(storage), "--num-cpus", "2")
    assert again.returncode == 0, f"second run failed:\n{again.stdout}\n{again.stderr}"
    total = epochs * steps_per_epoch
    assert re.search(rf"resumed from\W+step {done}\b", again.stdout), again.stdout
    assert re.search(rf"steps\W+{total}/{total} over {epochs} epoch\(s\)", again.stdout), again.stdout
    assert re.search(rf"checkpoint\W+{re.escape(str(storage))}\S+ \(step {total}\)", again.stdout), again.stdout
    assert len(kept()) == keep_last, f"keepLast {keep_last}, kept {kept()}"


def test_sigterm_saves_a_checkpoint_then_stops_in_one_line(tmp_path: Path) -> None:
    """As a process manager stops it (`docker stop`, systemd): the run checkpoints at its next step, as a preempted
    pod's does, and the command says where to resume; no crash dump of Ray's. Ctrl-C takes the same path."""
    storage = tmp_path / "gpt"
    env = os.environ | {"COLUMNS": "200", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [*BIGMODEL, "train", "examples/gpt-small.yaml", "--storage", str(storage), "--num-cpus", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = CheckpointStore(str(storage))
    deadline = time.monotonic() + 240
    while store.latest() is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    before = store.latest()
    assert before is not None, "no checkpoint was written within 240 s"
    process.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("bigmodel train did not stop within 90 s of SIGTERM")
    assert process.returncode == 128 + signal.SIGTERM, f"exit code {process.returncode}:\n{stdout}\n{stderr}"
    latest = store.latest()
    assert latest is not None and latest.step > before.step, (
        f"no checkpoint after step {before.step} was saved on SIGTERM:\n{stdout}"
    )
    assert f"Last checkpoint: step {latest.step}" in stdout and "Run the same command to resume" in stdout, stdout
    assert "SIGTERM received" not in stdout + stderr and "Traceback" not in stdout + stderr, stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("apiVersion: [unclosed", "not valid YAML"),
        (
            "apiVersion: bigmodel.dev/v1alpha1\nkind: BigModelJob\nmetadata: {name: x}\n"
            "spec: {workload: {builtin: {task: resnet}}}\n",
            "spec.workload.builtin.task",
        ),
    ],
    ids=["missing-file", "invalid-yaml", "invalid-spec"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, content: str | None, expected: str) -> None:
    manifest = tmp_path / "job.yaml"
    if content is not None:
        manifest.write_text(content)
    # A narrow terminal: the error must stay one line, not wrap.
    result = _train(str(manifest), timeout=60, columns=40)
    assert_one_line(result, str(manifest), expected)


def test_storage_that_cannot_be_written_is_one_line_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("storage must be a directory")
    result = _train("examples/digits.yaml", "--storage", str(blocker / "runs"), timeout=60, columns=40)
    assert_one_line(result, str(blocker / "runs"), "cannot be written")
    assert "Training" not in result.stdout, "training started on storage that takes no checkpoint"


def assert_one_line(result: subprocess.CompletedProcess[str], subject: str, expected: str) -> None:
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line of error, got:\n{result.stderr}"
    assert subject in lines[0] and expected.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_console_script_is_installed() -> None:
    script = shutil.which("bigmodel", path=str(Path(sys.executable).parent))
    assert script, "the `bigmodel` console script is not installed next to the interpreter"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("bigmodel "), result
