"""A failed step as the status and the Events say it, and how soon it is retried."""

from __future__ import annotations

from datetime import datetime, timezone

from bigmodel.api.job import BigModelJobStatus
from bigmodel.controller.handlers import MAX_BACKOFF_S, backoff_s
from bigmodel.controller.kube import KubeError
from bigmodel.controller.loop import step_failure
from bigmodel.controller.ray_client import RayRefused
from bigmodel.reconcile.step_failure import RECONCILE_FAILED, with_failure, without_failure

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
QUOTA = (
    '{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":'
    '"pods \\"demo-g1-w0\\" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=1, '
    'used: nvidia.com/gpu=8, limited: nvidia.com/gpu=8"}'
)


def test_an_api_refusal_is_said_in_the_apis_words() -> None:
    error = KubeError.from_answer(403, "POST", "/api/v1/namespaces/team/pods", QUOTA, None)
    failure = step_failure("creating Pod demo-g1-w0", error)
    assert failure.reason == "Forbidden"
    assert failure.message == (
        'creating Pod demo-g1-w0: pods "demo-g1-w0" is forbidden: exceeded quota: gpu-quota, '
        "requested: nvidia.com/gpu=1, used: nvidia.com/gpu=8, limited: nvidia.com/gpu=8"
    )


def test_ray_refusing_a_runtime_env_is_a_one_line_failure() -> None:
    failure = step_failure("submitting Ray job x", RayRefused("Ray refused job x: HTTP 400:\n  bad runtime_env"))
    assert failure.reason == "RayRefused" and "\n" not in failure.message


def test_a_failure_is_news_once_and_cleared_by_a_pass_that_goes_through() -> None:
    failure = step_failure("creating Pod p", KubeError(422, "POST", "/p", "admission webhook denied", "Invalid"))
    first, news = with_failure(BigModelJobStatus(), None, failure, NOW, 1)
    assert news
    [condition] = [c for c in first.conditions if c.type == RECONCILE_FAILED]
    assert (condition.status, condition.reason, condition.message) == ("True", "Invalid", failure.message)
    again, news = with_failure(first, first, failure, NOW, 1)
    assert not news, "the same problem on a retry is not a second Event"
    cleared = without_failure(again, NOW, 1)
    assert [c.status for c in cleared.conditions if c.type == RECONCILE_FAILED] == ["False"]


def test_backoff_doubles_to_a_cap_and_honours_retry_after() -> None:
    delays = [backoff_s(n, None) for n in range(1, 12)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and delays[-1] == MAX_BACKOFF_S
    assert all(a <= b for a, b in zip(delays, delays[1:], strict=False))
    assert backoff_s(1, 30.0) == 30.0
