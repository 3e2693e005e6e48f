"""The load generator of bench.serve_generation reads streamed completions as they come, against a tiny aiohttp
server with canned server-sent events (no Ray, no model)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.serving.generation_load import (
    JSON,
    SSE,
    EventStream,
    Timing,
    WorkItem,
    send,
    settle,
    summary,
    text_tokens,
    workload,
)

ROOT = Path(__file__).resolve().parents[2]
# Between the canned server's chunks: long enough to tell apart from the loopback's own delays.
CHUNK_GAP_S = 0.05
PIECES = ["Hel", "lo", ", wor", "ld"]


def _event(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


def _chunk(text: str, finish: str | None = None) -> bytes:
    return _event({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]})


async def _stream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(CHUNK_GAP_S)
    for index, piece in enumerate(PIECES):
        if index:
            await asyncio.sleep(CHUNK_GAP_S)
        event = _chunk(piece, "length" if index == len(PIECES) - 1 else None)
        # An event cut across two writes, as a TCP segment may cut it, is still one event.
        await response.write(event[:7])
        await response.write(event[7:])
    await response.write(_event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 12}}))
    await response.write(b"data: [DONE]\n\n")
    return response


async def _cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk("partial"))
    return response


async def _failing_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk("a"))
    await response.write(_event({"error": {"message": "the model failed: boom", "type": "server_error"}}))
    return response


async def _json(request: web.Request) -> web.Response:
    body = await request.json()
    await asyncio.sleep(CHUNK_GAP_S)
    return web.json_response({"text": "x" * body["max_tokens"], "completion_tokens": body["max_tokens"]})


async def _refused(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "queue full"}}, status=503)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/stream", _stream)
    app.router.add_post("/cut", _cut)
    app.router.add_post("/failing", _failing_stream)
    app.router.add_post("/json", _json)
    app.router.add_post("/refused", _refused)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _spec(url: str, kind: str = SSE, **more: Any) -> dict[str, Any]:
    return {"url": url, "kind": kind, "model": "bench", "request_timeout": 10.0, **more}


async def _send(url: str, kind: str = SSE) -> Timing:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        return await send(session, _spec(url, kind), WorkItem("abc", 12), time.perf_counter())


async def test_a_stream_is_timed_chunk_by_chunk_and_counted_by_its_usage(server: str) -> None:
    timing = await _send(f"{server}/stream")
    assert timing.error is None
    assert timing.tokens == 12
    assert timing.first is not None and timing.first - timing.start >= CHUNK_GAP_S * 0.9
    # One gap sample per token after the first chunk: "lo", ", wor", "ld" carry 2 + 5 + 2 tokens.
    assert len(timing.gaps) == 9
    # The gaps split each chunk's delay over its tokens; usage (12) equals the bytes the text stands for (12).
    assert all(gap > 0 for gap in timing.gaps)
    assert max(timing.gaps) >= CHUNK_GAP_S / 2 * 0.9
    assert timing.end >= timing.first + (len(PIECES) - 1) * CHUNK_GAP_S * 0.9


async def test_a_stream_without_done_is_an_error(server: str) -> None:
    timing = await _send(f"{server}/cut")
    assert timing.error == "the stream ended before [DONE]"


async def test_an_error_event_is_the_requests_error(server: str) -> None:
    timing = await _send(f"{server}/failing")
    assert timing.error == "the model failed: boom"


async def test_a_json_answer_counts_its_whole_latency_as_the_first_token(server: str) -> None:
    timing = await _send(f"{server}/json", JSON)
    assert timing.error is None and timing.tokens == 12
    assert timing.first == timing.end and timing.gaps == []


async def test_a_refusal_is_an_error_with_its_status(server: str) -> None:
    timing = await _send(f"{server}/refused")
    assert timing.error is not None and timing.error.startswith("HTTP 503")


async def test_nothing_listening_is_an_error_not_a_crash() -> None:
    timing = await _send("http://127.0.0.1:9/stream")
    assert timing.error is not None


def test_events_are_read_line_by_line_whatever_their_line_endings() -> None:
    events = EventStream()
    lines = [
        b": a comment\r\n",
        b"event: completion\r\n",
        b'data: {"choices": [{"text": "ab"}]}\r\n',
        b"\r\n",
        # One event's data on two lines, joined with a newline (still JSON).
        b'data: {"choices":\n',
        b'data: [{"text": "c"}]}\n',
        b"\n",
        b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n',
        b"\n",
        b"data: [DONE]\n",
    ]
    for time_s, line in enumerate(lines):
        events.line(line, float(time_s))
    events.end(99.0)
    timing = events.timing(0.0, 100.0)
    assert timing.error is None and timing.tokens == 3
    assert events.chunks == [(3.0, 2), (6.0, 1)]
    assert timing.first == 3.0 and timing.gaps == [3.0]


def test_a_replacement_character_counts_one_token_and_usage_rescales_the_estimate() -> None:
    # The byte-level GPT's invalid bytes reach the client as U+FFFD, three bytes of UTF-8 but one token.
    assert text_tokens("a\ufffdé") == 1 + 1 + 2
    timing = settle(Timing(0.0, 2.0), [(0.5, 2), (1.0, 1), (2.0, 1)], 8)
    # 4 estimated tokens, 8 counted by the server: every chunk stands for twice its estimate.
    assert timing.tokens == 8
    assert timing.gaps == [0.25, 0.5]


def test_an_answer_that_came_mostly_in_one_chunk_is_told_apart() -> None:
    steady = settle(Timing(0.0, 1.0), [(0.1 * index, 1) for index in range(10)], 10)
    held = settle(Timing(0.0, 1.0), [(0.1, 2), (1.0, 8)], 10)
    assert not steady.bunched and held.bunched
    assert not settle(Timing(0.0, 1.0), [(0.5, 3)], 3).bunched
    assert not Timing(0.0, 1.0, first=1.0, tokens=100).bunched


def test_throughput_counts_each_request_by_its_share_of_the_window() -> None:
    timings = [
        Timing(0.0, 4.0, first=1.0, tokens=100),  # half inside [2, 6]: 0.5 request, 50 tokens
        Timing(3.0, 5.0, first=3.5, tokens=10),  # whole
        Timing(5.0, 9.0, first=6.0, tokens=40),  # a quarter: 10 tokens
        Timing(7.0, 8.0, first=7.5, tokens=1000),  # after the window: not counted
        Timing(3.0, 4.0, error="HTTP 500"),
    ]
    point = summary(timings, 2.0, 6.0, concurrency=2)
    assert point["requests"] == 3 and point["errors"] == 1 and point["error_kinds"] == {"HTTP 500": 1}
    assert point["requests_per_s"] == pytest.approx(1.75 / 4)
    assert point["tokens_per_s"] == pytest.approx(70 / 4)
    assert point["concurrency"] == 2


def test_the_workload_is_the_same_list_every_time() -> None:
    spec = {"seed": 3, "count": 50, "prompt_bytes": [16, 128], "max_tokens": [16, 128]}
    items = workload(spec)
    assert items == workload(spec)
    assert all(16 <= len(item.prompt.encode()) <= 128 and 16 <= item.max_tokens <= 128 for item in items)
    assert len({len(item.prompt) for item in items}) > 10 and len({item.max_tokens for item in items}) > 10


async def test_the_load_generator_process_reports_a_closed_and_an_open_loop(server: str) -> None:
    common = _spec(
        f"{server}/stream",
        workload={"seed": 0, "count": 8, "prompt_bytes": [4, 8], "max_tokens": [4, 8]},
        warmup=0.2,
        duration=1.0,
        max_in_flight=64,
    )
    for spec, kind in ((dict(common, concurrency=[1, 3]), "closed"), (dict(common, rate=5.0), "open")):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.serving.generation_load",
            json.dumps(spec),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, stderr.decode()
        records = [json.loads(line) for line in stdout.decode().splitlines()]
        events = [record["event"] for record in records]
        points = [record for record in records if record["event"] == "point"]
        if kind == "closed":
            assert events == ["started"] + ["measuring", "measured", "point"] * 2 + ["done"]
            assert [point["concurrency"] for point in points] == [1, 3]
        else:
            assert events == ["started", "measuring", "measured", "point", "done"]
            assert points[0]["rate"] == 5.0 and points[0]["lag_p99_ms"] < 1000
        for point in points:
            assert point["errors"] == 0 and point["requests"] > 0
            # The canned stream always counts 12 tokens and takes about 4 chunk gaps.
            assert point["mean_tokens"] == 12
            assert point["ttft_p50_ms"] >= CHUNK_GAP_S * 1000 * 0.9
            assert point["itl_p50_ms"] > 0 and point["tokens_per_s"] > 0
