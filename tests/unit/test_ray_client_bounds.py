"""What a Ray head (which runs a tenant's code) can make the operator read: bounded in size, never decompressed,
and never an exception that stops the job's reconciliation. Against a real HTTP server on a loopback address."""

from __future__ import annotations

import gzip
import math
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from bigmodel.api.training_report import TrainingReport
from bigmodel.api.wire import PROGRESS_PORT, RAY_DASHBOARD_PORT
from bigmodel.controller.ray_client import MAX_ANSWER_BYTES, HttpRayClient, RayRefused

HEAD_IP = "127.0.0.83"  # a loopback address of its own, so the fixed Ray ports are free on it
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
    client = HttpRayClient(timeout_s=5)
    yield client
    await client.close()


async def test_a_gzip_bomb_on_the_progress_port_is_not_read(head: dict[str, Handler], ray: HttpRayClient) -> None:
    bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")

    async def progress(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    head["/progress"] = progress  # type: ignore[assignment]
    assert len(bomb) < 128 * 1024
    assert await ray.report(HEAD_IP) is None


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
        await ray.job(HEAD_IP, "bigmodel-x")
    assert await ray.report(HEAD_IP) is None


async def test_a_report_with_a_nan_loss_arrives_as_nan(head: dict[str, Handler], ray: HttpRayClient) -> None:
    sent = TrainingReport(step=3, total_steps=9, metrics={"loss": math.nan})

    async def progress(_: web.Request) -> web.Response:
        return web.Response(text=sent.model_dump_json(), content_type="application/json")

    head["/progress"] = progress  # type: ignore[assignment]
    report = await ray.report(HEAD_IP)
    assert report is not None and report.step == 3 and math.isnan(report.metrics["loss"] or 0.0)


async def test_a_report_of_the_wrong_shape_is_ignored(head: dict[str, Handler], ray: HttpRayClient) -> None:
    async def progress(_: web.Request) -> web.Response:
        return web.json_response({"step": "many", "metrics": {"loss": "low"}})

    head["/progress"] = progress  # type: ignore[assignment]
    assert await ray.report(HEAD_IP) is None
