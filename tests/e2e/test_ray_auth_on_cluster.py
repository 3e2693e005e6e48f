"""Ray's token auth of the commands' embedded Ray. A cluster the operator builds is attacked in
tests/e2e/test_operator_on_ray.py, on the job that test runs."""

from __future__ import annotations

import os

import pytest

from tests.support.ray_attacks import joins_gcs

pytestmark = pytest.mark.e2e


def test_the_embedded_ray_of_the_commands_takes_only_its_own_token(ray_cluster: str) -> None:
    """`bigmodel train` and `bigmodel serve` start their Ray as this fixture does (runtime/embedded.py)."""
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert not joins_gcs(ray_cluster, "0" * 64), "a driver with a made-up token joined the embedded Ray"
    assert joins_gcs(ray_cluster, os.environ["RAY_AUTH_TOKEN"])
