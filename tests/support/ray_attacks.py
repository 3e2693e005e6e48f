"""What an attacker without a cluster's token tries against its Ray (the README's Security table), as plain clients."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GCS_JOIN_S = 60
# A Ray job an attacker would submit: run anything on the cluster's nodes.
PAYLOAD = json.dumps({"entrypoint": "id", "submission_id": "attack"}).encode()
SERVE_PAYLOAD = json.dumps({"applications": []}).encode()


def waiting_job(name: str, storage: Path) -> dict[str, Any]:
    """A job whose driver only waits, on one worker: a second Ray cluster at little cost."""
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name},
        "spec": {
            "workload": {"command": [sys.executable, "-c", "import time; time.sleep(600)"]},
            "workers": {"replicas": 1, "resources": {"cpu": "1", "memory": "1Gi"}},
            "head": {"resources": {"cpu": "1", "memory": "1Gi"}},
            "checkpoint": {"storage": str(storage)},
        },
    }


def http(method: str, url: str, token: str | None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def joins_gcs(address: str, token: str) -> bool:
    """Whether a Ray driver with this token gets into the cluster whose GCS is at `address` (Ray's own client, as
    code in another cluster's pod would use it)."""
    script = (
        f"import ray\nray.init(address='{address}', logging_level='ERROR')\nprint('JOINED', ray.cluster_resources())\n"
    )
    env = {
        "PATH": str(Path(sys.executable).parent),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # Ray's driver asks the GCS up to 20 times, a second apart, before it gives up; a refused token is refused
        # every time, so 3 tries say the same in 3 s instead of 20.
        "RAY_NUM_REDIS_GET_RETRIES": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=GCS_JOIN_S, check=False
    )
    return done.returncode == 0 and "JOINED" in done.stdout


def http_attacks(dashboard: str, progress: str, other_token: str) -> list[tuple[str, int]]:
    """Each HTTP attack on a job's head (its dashboard and its driver's progress URL) and the status it got."""
    return [
        ("submit a job, no token", http("POST", f"{dashboard}/api/jobs/", None, PAYLOAD)),
        ("submit a job, a made-up token", http("POST", f"{dashboard}/api/jobs/", "0" * 64, PAYLOAD)),
        ("submit a job, another cluster's token", http("POST", f"{dashboard}/api/jobs/", other_token, PAYLOAD)),
        ("list the jobs (their runtime env), no token", http("GET", f"{dashboard}/api/jobs/", None)),
        ("deploy Serve applications, no token", http("PUT", f"{dashboard}/api/serve/applications/", None, SERVE_PAYLOAD)),
        ("deploy Serve applications, another cluster's token",
         http("PUT", f"{dashboard}/api/serve/applications/", other_token, SERVE_PAYLOAD)),
        ("list the nodes (State API), no token", http("GET", f"{dashboard}/api/v0/nodes", None)),
        ("read the training progress, no token", http("GET", progress, None)),
        ("read the training progress, another cluster's token", http("GET", progress, other_token)),
    ]  # fmt: skip
