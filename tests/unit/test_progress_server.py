"""The training driver's progress endpoint on a job's head: the operator reads it with the cluster's Ray token, and
nobody reads it without."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from bigmodel.runtime.job_entrypoint import ProgressServer

TOKEN = "a" * 64
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, authorization: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/progress")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with NO_PROXY.open(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [(None, 401), ("Bearer wrong", 401), (TOKEN, 401), (f"Basic {TOKEN}", 401), (f"Bearer {TOKEN}", 200)],
)
def test_only_the_clusters_token_reads_the_progress(authorization: str | None, expected: int) -> None:
    port = free_port()
    with ProgressServer(port, TOKEN):
        assert get(port, authorization) == expected


def test_without_a_token_to_check_nothing_is_served() -> None:
    port = free_port()
    with ProgressServer(port, None):
        assert get(port, "Bearer ") == 401 and get(port, None) == 401
