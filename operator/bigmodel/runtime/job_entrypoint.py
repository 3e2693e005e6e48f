"""The Ray job the operator submits: trains one BigModelJob on the cluster it runs in.

`python -m bigmodel.runtime.job_entrypoint` on the Ray head. It reads the job from the environment,
serves the run's progress as JSON on the head's progress port for the operator to poll, and exits 0
only when training finished and the model was exported.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ray

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.api.training_report import TrainingReport
from bigmodel.runtime.driver import TrainingCannotRun, TrainingFailed, run_command, run_training
from bigmodel.runtime.progress import ProgressSnapshot, training_report

# The operator polls every few seconds; the final report (model URI, last metrics) must outlive one poll.
DEFAULT_LINGER_S = 10.0
# How often rank 0 reports its step; spec.env may lower it (wire.PROGRESS_INTERVAL_ENV) where the exact step of a
# failure matters.
DEFAULT_PROGRESS_INTERVAL_S = 0.5


class ProgressServer:
    """GET /progress -> the latest TrainingReport; the operator reads status from here, with the cluster's Ray
    token. Without a token to check (none in the environment) nothing is served: the report names the job, its
    storage and its metrics, which are for the cluster and the operator only."""

    def __init__(self, port: int, token: str | None) -> None:
        self._report = TrainingReport()
        self._lock = threading.Lock()
        expected = f"{wire.BEARER_PREFIX}{token}".encode() if token else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server hook's name)
                offered = self.headers.get("Authorization", "").encode()
                if expected is None or not hmac.compare_digest(offered, expected):
                    self.send_error(401, "the cluster's Ray token is required")
                    return
                if self.path != "/progress":
                    self.send_error(404, "only /progress is served")
                    return
                body = server.report().model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Polled every few seconds: access logs would drown the training log."""

        self._http = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, name="progress-http", daemon=True)

    def __enter__(self) -> ProgressServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def report(self) -> TrainingReport:
        with self._lock:
            return self._report

    def update(self, snapshot: ProgressSnapshot) -> None:
        report = training_report(snapshot)
        with self._lock:
            self._report = report


def main() -> int:
    job = BigModelJob.model_validate(json.loads(os.environ[wire.MANIFEST_ENV]), by_alias=True)
    spec = job.spec
    storage = spec.checkpoint.storage
    if storage is None:
        print("spec.checkpoint.storage is required in a cluster", file=sys.stderr)
        return 2
    ray.init(address="auto")
    if spec.workload.command is not None:
        return run_command(spec, storage, ray.get_runtime_context().gcs_address)
    resources = {"CPU": float(spec.workers.resources.ray_cpus())}
    if spec.uses_gpu():
        resources["GPU"] = float(spec.workers.resources.gpu)
    port = int(os.environ.get(wire.PROGRESS_PORT_ENV, wire.PROGRESS_PORT))
    with ProgressServer(port, os.environ.get(wire.RAY_AUTH_TOKEN_ENV)) as server:
        try:
            result = run_training(
                job.metadata.name,
                spec,
                storage,
                resources_per_worker=resources,
                on_progress=server.update,
                progress_interval_s=float(os.environ.get(wire.PROGRESS_INTERVAL_ENV, DEFAULT_PROGRESS_INTERVAL_S)),
            )
        except TrainingFailed as error:
            marker = wire.CANNOT_RUN_MARKER if isinstance(error, TrainingCannotRun) else wire.FAILURE_MARKER
            print(f"{marker}{error}", file=sys.stderr)
            return 1
        time.sleep(float(os.environ.get(wire.PROGRESS_LINGER_ENV, DEFAULT_LINGER_S)))
    print(json.dumps({"steps": result.steps, "model": result.model_uri, "metrics": result.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
