"""What a Ray head (which runs a tenant's code) can make the operator read: bounded in size, never decompressed,
and never an exception that stops the job's reconciliation; and what the operator sends it: the cluster's token on
every call, and no other cluster's. Against a real HTTP server on a loopback address."""

from __future__ import annotations

import gzip
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import CANNOT_RUN_MARKER, FAILURE_MARKER, PROGRESS_PORT, RAY_DASHBOARD_PORT
from bigmodel.controller.cluster_tokens import ClusterTokens
from bigmodel.controller.ray_client import MAX_ANSWER_BYTES, HttpRayClient, RayRefused, RayTokenRefused
from bigmodel.reconcile.observed import RayHead

HEAD_IP = "127.0.0.83"  # a loopback address of its own, so the fixed Ray ports are free on it
HEAD = RayHead(HEAD_IP, "6f1c2d3e-uid", 4)
TOKENS = ClusterTokens(b"k" * 32)
Handler = Callable[[web.Request], web.StreamResponse]


@pytest.fixture
async def head() -> AsyncIterator[dict[str, Handler]]:
    """A fake head: tests put a handler per path; both the dashboard and progress ports serve them."""
    routes: dict[str, Handler] = {}

    async def route(request: web.Request) -> web.StreamResponse:
        return await routes[request.path](request)  # type: ignore[misc]

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app)
    await runner.setup()
    for port in (RAY_DASHBOARD_PORT, PROGRESS_PORT):
        await web.TCPSite(runner, HEAD_IP, port).start()
    yield routes
    await runner.cleanup()


@pytest.fixture
async def ray() -> AsyncIterator[HttpRayClient]:
    client = HttpRayClient(TOKENS, timeout_s=5)
    yield client
    await client.close()


async def test_a_gzip_bomb_on_the_progress_port_is_not_read(head: dict[str, Handler], ray: HttpRayClient) -> None:
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")

    async def progress(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    head["/progress"] = progress  # type: ignore[assignment]
    assert len(bomb) < 128 * 1024
    assert await ray.report(HEAD) is None


async def test_an_endless_answer_is_cut_at_the_bound(head: dict[str, Handler], ray: HttpRayClient) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * (1024 * 1024)
        for _ in range(MAX_ANSWER_BYTES // len(chunk) + 4):
            await response.write(chunk)
        return response

    head["/api/jobs/bigmodel-x"] = endless  # type: ignore[assignment]
    head["/progress"] = endless  # type: ignore[assignment]
    with pytest.raises(RayRefused, match="over"):
        await ray.job(HEAD, "bigmodel-x")
    assert await ray.report(HEAD) is None


async def test_a_report_with_a_nan_loss_arrives_as_nan(head: dict[str, Handler], ray: HttpRayClient) -> None:
    sent = TrainingReport(step=3, total_steps=9, metrics={"loss": math.nan})

    async def progress(_: web.Request) -> web.Response:
        return web.Response(text=sent.model_dump_json(), content_type="application/json")

    head["/progress"] = progress  # type: ignore[assignment]
    report = await ray.report(HEAD)
    assert report is not None and report.step == 3 and math.isnan(report.metrics["loss"] or 0.0)


async def test_a_report_of_the_wrong_shape_is_ignored(head: dict[str, Handler], ray: HttpRayClient) -> None:
    async def progress(_: web.Request) -> web.Response:
        return web.json_response({"step": "many", "metrics": {"loss": "low"}})

    head["/progress"] = progress  # type: ignore[assignment]
    assert await ray.report(HEAD) is None


async def test_every_call_carries_the_clusters_own_token(head: dict[str, Handler], ray: HttpRayClient) -> None:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"status": "RUNNING", "applications": {}, "data": {}})

    for path in ("/api/jobs/", "/api/jobs/bigmodel-x", "/api/jobs/bigmodel-x/stop", "/progress",
                 "/api/serve/applications/", "/api/v0/nodes", "/api/cluster_status"):  # fmt: skip
        head[path] = answer  # type: ignore[assignment]
    await ray.submit(HEAD, {"submission_id": "bigmodel-x"})
    await ray.job(HEAD, "bigmodel-x")
    await ray.stop(HEAD, "bigmodel-x")
    await ray.report(HEAD)
    await ray.deploy_serve(HEAD, {})
    await ray.serve_state(HEAD, "app")
    assert len(seen) == 8
    assert set(seen) == {f"Bearer {TOKENS.token(HEAD.owner_uid, HEAD.generation)}"}
    others = {TOKENS.token(HEAD.owner_uid, 5), TOKENS.token("another-uid", 4), ClusterTokens(b"j" * 32).of(HEAD)}
    assert len(others | {TOKENS.of(HEAD)}) == 4, "every cluster, and every key, must give another token"


async def test_a_refused_token_says_so(head: dict[str, Handler], ray: HttpRayClient) -> None:
    async def refuse(_: web.Request) -> web.Response:
        return web.Response(status=403, text="Forbidden: Invalid authentication token")

    head["/api/jobs/bigmodel-x"] = refuse  # type: ignore[assignment]
    with pytest.raises(RayTokenRefused, match="refused its token"):
        await ray.job(HEAD, "bigmodel-x")


async def test_a_run_that_cannot_run_is_told_from_one_that_failed(head: dict[str, Handler], ray: HttpRayClient) -> None:
    log = "Job entrypoint command failed with exit code 1, last available logs:\n{marker}checkpoint storage /x cannot be written: Permission denied\n"

    def answering(marker: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def job(_: web.Request) -> web.Response:
            return web.json_response({"status": "FAILED", "message": log.format(marker=marker)})

        return job

    head["/api/jobs/bigmodel-x"] = answering(CANNOT_RUN_MARKER)  # type: ignore[assignment]
    view = await ray.job(HEAD, "bigmodel-x")
    assert view is not None and view.cannot_run
    assert view.message.endswith(": checkpoint storage /x cannot be written: Permission denied")
    head["/api/jobs/bigmodel-x"] = answering(FAILURE_MARKER)  # type: ignore[assignment]
    view = await ray.job(HEAD, "bigmodel-x")
    assert view is not None and not view.cannot_run and "Permission denied" in view.message
