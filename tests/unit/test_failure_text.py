"""What an admin reads in a status message or an Event when Ray reports a failure: one line that says why."""

from __future__ import annotations

from bigmodel.api.wire import FAILURE_MARKER
from bigmodel.controller.ray_client import app_view
from bigmodel.reconcile.failure_text import MAX_CHARS, failure_summary

# Shaped like Ray 2.60's answer for a failed job: a headline, then the driver log's tail, colored, with the lines Ray
# forwards from actors after the driver's own last words.
RAY_JOB_MESSAGE = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "    0 pending objects of total size 0MB\n"
    "training failed: WorkerGroupError on rank 0: ActorDiedError: The actor died unexpectedly before finishing this "
    "task.\n"
    "\x1b[36m(TrainController pid=24759)\x1b[0m ray.exceptions.ActorDiedError: The actor died unexpectedly before "
    "finishing this task. \x1b[32m [repeated 2x across cluster]\x1b[0m\n"
    "\x1b[36m(TrainController pid=24759)\x1b[0m \tclass_name: ProgressLog \x1b[32m [repeated 2x across cluster]\x1b[0m\n"
)
DRIVER_CRASH = (
    "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
    "Traceback (most recent call last):\n"
    '  File "<frozen runpy>", line 189, in _run_module_as_main\n'
    "ModuleNotFoundError: No module named 'bigmodel'\n"
)
SERVE_MESSAGE = (
    "Deploying app 'digits' failed with exception:\n"
    "Traceback (most recent call last):\n"
    '  File "/app/bigmodel/runtime/serving/app.py", line 60, in __init__\n'
    "    self.model = load_model(model_uri)\n"
    "FileNotFoundError: [Errno 2] No such file or directory: '/models/digits/model.pt'\n"
)


def test_a_failed_job_reads_as_ray_headline_and_the_entrypoint_reason() -> None:
    assert failure_summary(RAY_JOB_MESSAGE, FAILURE_MARKER) == (
        "Job entrypoint command failed with exit code 1: "
        "WorkerGroupError on rank 0: ActorDiedError: The actor died unexpectedly before finishing this task."
    )


def test_a_driver_that_never_reached_training_is_summed_up_by_its_exception() -> None:
    assert failure_summary(DRIVER_CRASH, FAILURE_MARKER) == (
        "Job entrypoint command failed with exit code 1: ModuleNotFoundError: No module named 'bigmodel'"
    )


def test_a_serve_traceback_becomes_its_headline_and_error() -> None:
    view = app_view({"status": "DEPLOY_FAILED", "message": SERVE_MESSAGE, "deployments": {}})
    assert view.message == (
        "Deploying app 'digits' failed with exception: "
        "FileNotFoundError: [Errno 2] No such file or directory: '/models/digits/model.pt'"
    )


def test_one_line_messages_pass_through_and_every_summary_is_bounded() -> None:
    assert failure_summary("Job was intentionally stopped.") == "Job was intentionally stopped."
    assert failure_summary("") == ""
    long = failure_summary("head\nValueError: " + "x" * 5000)
    assert len(long) == MAX_CHARS and long.startswith("head: ValueError: x") and long.endswith("…")
