"""Ray's token auth on a real cluster: the operator, the API emulator, pods as local processes, real Ray.

Job `alpha` trains (so its driver serves progress); the operator's own calls with alpha's token work (alpha reaches
Running with progress it read). Job `beta` is made in a namespace the local kubelet does not run: its pods never
start (two Ray heads on one host would share the operator's view of port 8265), but the operator gives it a token of
its own, which every process of beta's pods would have. Every request an attacker could send without alpha's token
is refused, beta's token included, through Ray's GCS as well as its HTTP APIs. The table of attacks is the one in the
README's Security section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel.api.wire import PROGRESS_PORT, RAY_DASHBOARD_PORT, RAY_GCS_PORT
from tests.support.emulator import KubeClient, wait_for
from tests.support.local_cluster import LocalCluster, cluster_token, local_cluster, two_worker_gpt_job

pytestmark = pytest.mark.e2e

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
ELSEWHERE = "elsewhere"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
GCS_JOIN_S = 60
# A Ray job an attacker would submit: run anything on the cluster's nodes.
PAYLOAD = json.dumps({"entrypoint": "id", "submission_id": "attack"}).encode()
SERVE_PAYLOAD = json.dumps({"applications": []}).encode()


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as running:
        yield running


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
    env = {"PATH": str(Path(sys.executable).parent), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=GCS_JOIN_S, check=False
    )
    return done.returncode == 0 and "JOINED" in done.stdout


async def test_a_cluster_answers_only_its_own_token(cluster: LocalCluster, tmp_path: Path) -> None:
    emulator, kubelet = cluster.emulator, cluster.kubelet
    async with KubeClient(emulator.url) as kube:
        alpha = two_worker_gpt_job("alpha", tmp_path / "alpha", max_steps=100_000, every_steps=1000, max_restarts=0)
        alpha["spec"]["workers"]["replicas"] = 1
        alpha["spec"]["workload"]["builtin"]["epochs"] = 1000  # runs until the test ends
        await kube.create(*JOBS, alpha)
        await kube.create(*JOBS, waiting_job("beta", tmp_path / "beta"), namespace=ELSEWHERE)

        async def training() -> dict[str, Any] | None:
            found = await kube.get(*JOBS, "alpha")
            status = (found or {}).get("status") or {}
            return status if status.get("phase") == "Running" and status["progress"]["step"] > 0 else None

        # The operator submitted alpha's run, polled it and read its progress, each with alpha's token.
        await wait_for(training, 240, "alpha did not report training progress within 240 s", 1.0)
        alpha_token, beta_token = await cluster_token(kube, "alpha", 1), await cluster_token(kube, "beta", 1, ELSEWHERE)
        assert alpha_token != beta_token

    dashboard = f"http://127.0.0.1:{kubelet.host_port('alpha-g1-head', RAY_DASHBOARD_PORT)}"
    progress = f"http://127.0.0.1:{kubelet.host_port('alpha-g1-head', PROGRESS_PORT)}/progress"
    attacks: list[tuple[str, int]] = [
        ("submit a job, no token", http("POST", f"{dashboard}/api/jobs/", None, PAYLOAD)),
        ("submit a job, a made-up token", http("POST", f"{dashboard}/api/jobs/", "0" * 64, PAYLOAD)),
        ("submit a job, another cluster's token", http("POST", f"{dashboard}/api/jobs/", beta_token, PAYLOAD)),
        ("list the jobs (their runtime env), no token", http("GET", f"{dashboard}/api/jobs/", None)),
        ("deploy Serve applications, no token", http("PUT", f"{dashboard}/api/serve/applications/", None, SERVE_PAYLOAD)),
        ("deploy Serve applications, another cluster's token",
         http("PUT", f"{dashboard}/api/serve/applications/", beta_token, SERVE_PAYLOAD)),
        ("list the nodes (State API), no token", http("GET", f"{dashboard}/api/v0/nodes", None)),
        ("read the training progress, no token", http("GET", progress, None)),
        ("read the training progress, another cluster's token", http("GET", progress, beta_token)),
    ]  # fmt: skip
    accepted = [(attack, status) for attack, status in attacks if status < 400]
    assert not accepted, f"requests without alpha's token were served: {accepted}"
    assert {status for _, status in attacks} <= {401, 403}

    gcs = f"127.0.0.1:{kubelet.host_port('alpha-g1-head', RAY_GCS_PORT)}"
    assert not joins_gcs(gcs, beta_token), "a driver with beta's token joined alpha's cluster"
    # The control: the same requests with alpha's own token are served, so what refused them was the token.
    assert http("GET", f"{dashboard}/api/jobs/", alpha_token) == 200
    assert http("GET", progress, alpha_token) == 200
    assert joins_gcs(gcs, alpha_token), "a driver with alpha's own token could not join alpha's cluster"


def test_the_embedded_ray_of_the_commands_takes_only_its_own_token(ray_cluster: str) -> None:
    """`bigmodel train` and `bigmodel serve` start their Ray as this fixture does (runtime/embedded.py)."""
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert not joins_gcs(ray_cluster, "0" * 64), "a driver with a made-up token joined the embedded Ray"
    assert joins_gcs(ray_cluster, os.environ["RAY_AUTH_TOKEN"])
