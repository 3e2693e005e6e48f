"""The whole product on this machine: API emulator, local kubelet, the real operator, pods running real Ray.

Shared by the end-to-end tests and bench.recovery.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp

from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import PROGRESS_PORT, RAY_DASHBOARD_PORT, TOKEN_SECRET_KEY
from bigmodel.builders.naming import token_secret_name
from bigmodel.controller.settings import OperatorSettings
from tests.support.emulator import PROJECT_CRDS, Emulator, KubeClient, running_emulator
from tests.support.kubelet import LocalKubelet
from tests.support.operator import running_operator
from tests.support.redis_server import RedisServer


@dataclass(frozen=True)
class LocalCluster:
    emulator: Emulator
    kubelet: LocalKubelet


REDIS_PASSWORD_SECRET = "gcs-redis"


@contextmanager
def local_cluster(
    work_dir: Path, poll_running_s: float = 1.0, redis: RedisServer | None = None
) -> Iterator[LocalCluster]:
    """Everything up until the block ends. This interpreter's environment plays the runtime image. With `redis`,
    the operator builds services' clusters with GCS fault tolerance on it: its password in a Secret of the
    operator's namespace, as the chart puts it."""
    image_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    settings: dict[str, Any] = {"poll_running_s": poll_running_s}
    with mock.patch.dict(os.environ, image_env):
        with running_emulator(PROJECT_CRDS) as emulator:
            if redis is not None:
                asyncio.run(_password_secret(emulator, redis.password))
                settings |= {"gcs_redis_address": redis.address, "gcs_redis_password_secret": REDIS_PASSWORD_SECRET}
            with LocalKubelet(emulator.url, work_dir / "pod-logs") as kubelet:
                with running_operator(emulator, None, **settings):
                    yield LocalCluster(emulator, kubelet)


async def _password_secret(emulator: Emulator, password: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": REDIS_PASSWORD_SECRET},
        "data": {"password": base64.b64encode(password.encode()).decode()},
    }
    async with KubeClient(emulator.url) as kube:
        await kube.create("v1", "secrets", secret, namespace=OperatorSettings().namespace)


async def cluster_token(kube: KubeClient, job: str, generation: int, namespace: str = "default") -> str:
    """A job's cluster's Ray token, from the Secret the operator made for it."""
    secret = await kube.get("v1", "secrets", token_secret_name(job, generation), namespace=namespace)
    assert secret is not None, f"cluster {generation} of {job} has no token Secret"
    return base64.b64decode(secret["data"][TOKEN_SECRET_KEY]).decode()


class DriverProgress:
    """A run's driver's progress endpoint on its head pod, read as the operator reads it (with the cluster's Ray
    token), at the caller's own pace."""

    def __init__(self, kubelet: LocalKubelet, head_pod: str, token: str) -> None:
        self._url = f"http://127.0.0.1:{kubelet.host_port(head_pod, PROGRESS_PORT)}/progress"
        self._token = token

    def read(self) -> TrainingReport | None:
        """The driver's latest report; None while the endpoint does not answer."""
        request = urllib.request.Request(self._url, headers={"Authorization": f"Bearer {self._token}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return TrainingReport.model_validate(json.loads(response.read()))
        except OSError:  # urllib's URLError included
            return None


async def ray_dashboard_get(kubelet: LocalKubelet, head_pod: str, path: str, token: str) -> Any:
    """GET one of Ray's dashboard APIs (`/api/jobs/`) on a head pod the kubelet runs, with the cluster's token, as
    the operator calls it."""
    url = f"http://127.0.0.1:{kubelet.host_port(head_pod, RAY_DASHBOARD_PORT)}{path}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        response.raise_for_status()
        return await response.json(content_type=None)


def two_worker_gpt_job(
    name: str, storage: Path, *, max_steps: int, every_steps: int, max_restarts: int, **spec: Any
) -> dict[str, Any]:
    """A small GPT on two one-CPU workers: a few seconds a checkpoint interval on this machine."""
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name},
        "spec": {
            "workload": {
                "builtin": {
                    "task": "gpt",
                    "maxSteps": max_steps,
                    "batchSize": 8,
                    "gpt": {"layers": 2, "heads": 2, "embedDim": 64, "contextLength": 64, "corpusMegabytes": 0.5},
                }
            },
            "workers": {"replicas": 2, "resources": {"cpu": "1", "memory": "2Gi"}},
            "head": {"resources": {"cpu": "1", "memory": "2Gi"}},
            "checkpoint": {"storage": str(storage), "everySteps": every_steps, "keepLast": 2},
            # One lost pod can cost Ray Train two or three tries here: the surviving rank's broken collective, then
            # placements while the dead node is being detected on two busy cores. The budget absorbs one loss.
            "failurePolicy": {"maxRestarts": max_restarts, "maxWorkerFailures": 5},
            **spec,
        },
    }
