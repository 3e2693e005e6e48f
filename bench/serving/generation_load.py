"""The load generator of `python -m bench.serve_generation`, a process of its own: completions of a mixed workload,
read as server-sent events as they come (the product's streamed /v1/completions) or as one JSON answer (baseline (b)).

    python -m bench.serving.generation_load SPEC_JSON

It prints JSON records, one a line: `started`; `measuring` and `measured` at the start and end of each measured window
(the parent samples the servers' CPU time there); a `point` per load point, once the requests in flight at the end of
the window have been answered; and `done`.

The workload is a fixed list of requests drawn from a seed (prompts of mixed lengths, mixed max_tokens), taken in
order, round-robin; the in-process measurement draws the same list in the same order, so every system is asked the
same things. The figures of a point (summary()):

  tokens/s, requests/s  each answered request counts with the share of its lifetime (send to last byte) that lies in
                        the measured window, so a server that answers in bursts (a batch that runs longer than the
                        window) is measured at its rate and not at the chance of a burst landing inside the window
  TTFT                  from sending the request (open loop: from its scheduled time) to the first chunk carrying text;
                        for a JSON answer, the whole latency, since nothing streams
  ITL                   the gap between a chunk and the one before it, divided over the tokens it carries, one sample
                        per token. SSE chunks carry text, not tokens: for the byte-level GPT a token is a UTF-8 byte, so
                        a chunk's tokens are its bytes (a U+FFFD, which stands for a byte the server could not decode,
                        counting one), scaled so that they add up to the usage chunk's completion_tokens
  bunched               answered streams that came mostly in one chunk (at least BUNCHED_TOKENS tokens and half of
                        theirs): text the server held back, which shows in their TTFT and ITL
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import bench_parser
from bench.serving.loadgen import JSON_HEADERS, fixed_rate, percentile

OK = 200
SSE = "sse"
JSON = "json"
# Printable ASCII, so that a prompt's characters, bytes and byte-level tokens are the same count.
PROMPT_ALPHABET = string.ascii_letters + string.digits + " .,;:!?()-"
REPLACEMENT = "\ufffd"
# Kinds of error shown with a point, most frequent first.
ERROR_KINDS_SHOWN = 3
# A chunk of at least this many tokens, and half of its answer's, is one the answer came in mostly.
BUNCHED_TOKENS = 4


@dataclass(frozen=True)
class WorkItem:
    prompt: str
    max_tokens: int


def workload(spec: dict[str, Any]) -> list[WorkItem]:
    """spec's requests: count of them, prompt lengths and max_tokens uniform in their inclusive ranges, from seed."""
    rng = random.Random(spec["seed"])
    low_prompt, high_prompt = spec["prompt_bytes"]
    low_tokens, high_tokens = spec["max_tokens"]
    items = []
    for _ in range(spec["count"]):
        length = rng.randint(low_prompt, high_prompt)
        prompt = "".join(rng.choice(PROMPT_ALPHABET) for _ in range(length))
        items.append(WorkItem(prompt, rng.randint(low_tokens, high_tokens)))
    return items


@dataclass
class Timing:
    """One request: start is when it was sent (open loop: when it was due), first when its first token came."""

    start: float
    end: float = math.nan
    first: float | None = None
    tokens: int = 0
    # Inter-token latencies, one per token after the first chunk.
    gaps: list[float] = field(default_factory=list)
    # Tokens of its largest chunk (streamed answers only).
    largest_chunk: float = 0.0
    error: str | None = None

    @property
    def bunched(self) -> bool:
        """Most of a streamed answer came in one chunk: the server held its text back (or could not send it in
        time), which its TTFT and ITL then show."""
        return self.largest_chunk >= max(BUNCHED_TOKENS, self.tokens / 2)


def text_tokens(text: str) -> int:
    """Tokens of the byte-level GPT that text stands for: its UTF-8 bytes, a U+FFFD counting one."""
    return sum(1 if character == REPLACEMENT else len(character.encode("utf-8")) for character in text)


def settle(timing: Timing, chunks: Sequence[tuple[float, int]], total: int | None) -> Timing:
    """timing completed from the (arrival time, tokens) of the chunks that carried tokens; total (the server's count,
    when it gave one) rescales the chunks' tokens, which may be estimates."""
    counted = sum(tokens for _, tokens in chunks)
    timing.tokens = total if total is not None else counted
    if chunks:
        timing.first = chunks[0][0]
    scale = timing.tokens / counted if counted and timing.tokens else 1.0
    timing.largest_chunk = max((tokens * scale for _, tokens in chunks), default=0.0)
    for (before, _), (at, tokens) in itertools.pairwise(chunks):
        timing.gaps.extend([(at - before) / (tokens * scale)] * tokens)
    return timing


class EventStream:
    """The server-sent events of one streamed completion, fed line by line as they arrive.

    Events end at a blank line; their `data:` lines are joined. `data: [DONE]` ends the stream; an event with an
    `error` member is the server's error (its status line had already gone out); a `usage` member gives the final
    token count."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, int]] = []
        self.text: list[str] = []
        self.usage: int | None = None
        self.done = False
        self.error: str | None = None
        self._data: list[str] = []

    def line(self, raw: bytes, now: float) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            self._dispatch(now)
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # Comments (":...") and the event, id and retry fields say nothing a completion needs.

    def end(self, now: float) -> None:
        """The body ended: an event not closed by a blank line still counts."""
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        if not self._data:
            return
        data, self._data = "\n".join(self._data), []
        if self.done or self.error is not None:
            self.error = self.error or "an event after [DONE]"
            return
        if data == "[DONE]":
            self.done = True
            return
        try:
            document = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"an event that is not JSON: {data[:80]!r}"
            return
        if not isinstance(document, dict):
            self.error = f"an event that is not a JSON object: {data[:80]!r}"
            return
        if "error" in document:
            error = document["error"]
            self.error = str(error.get("message", error) if isinstance(error, dict) else error)
            return
        for choice in document.get("choices") or []:
            # A completion chunk has text; a chat chunk has a delta.
            text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if text:
                self.text.append(text)
                self.chunks.append((now, text_tokens(text)))
        usage = document.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage = usage["completion_tokens"]

    def timing(self, start: float, end: float) -> Timing:
        timing = settle(Timing(start, end), self.chunks, self.usage)
        if self.error is None and not self.done:
            self.error = "the stream ended before [DONE]"
        timing.error = self.error
        return timing


def request_body(spec: dict[str, Any], item: WorkItem) -> bytes:
    """The POST body: OpenAI's streamed, greedy completion with usage for SSE; prompt and max_tokens for JSON."""
    if spec["kind"] == SSE:
        document: dict[str, Any] = {
            "model": spec["model"],
            "prompt": item.prompt,
            "max_tokens": item.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    else:
        document = {"prompt": item.prompt, "max_tokens": item.max_tokens}
    return json.dumps(document).encode()


async def send(session: Any, spec: dict[str, Any], item: WorkItem, start: float) -> Timing:
    """One request, timed from start; errors (status, connection, timeout, a bad answer) end up in Timing.error."""
    import aiohttp

    try:
        async with session.post(spec["url"], data=request_body(spec, item), headers=JSON_HEADERS) as response:
            if response.status != OK:
                text = (await response.text())[:200]
                return Timing(start, time.perf_counter(), error=f"HTTP {response.status}: {text}")
            if spec["kind"] == SSE:
                events = EventStream()
                async for line in response.content:
                    events.line(line, time.perf_counter())
                end = time.perf_counter()
                events.end(end)
                return events.timing(start, end)
            answer = await response.json(content_type=None)
            end = time.perf_counter()
            tokens = answer.get("completion_tokens") if isinstance(answer, dict) else None
            if not isinstance(tokens, int):
                return Timing(start, end, error=f"an answer without completion_tokens: {str(answer)[:80]}")
            return Timing(start, end, first=end, tokens=tokens)
    except asyncio.TimeoutError:
        return Timing(start, time.perf_counter(), error=f"no answer within {spec['request_timeout']:g} s")
    except (aiohttp.ClientError, ValueError) as error:
        return Timing(start, time.perf_counter(), error=f"{type(error).__name__}: {str(error)[:120]}")


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def summary(
    timings: Sequence[Timing], measure_from: float, stop_at: float, *, scheduled: bool = False, **extra: Any
) -> dict[str, Any]:
    """A load point's figures (see the module's docstring). Requests alive in the window count; with scheduled (an
    open loop), the requests due in the window, each counted whole, as the achieved rate is theirs."""
    window = stop_at - measure_from
    if scheduled:
        counted = [timing for timing in timings if measure_from <= timing.start < stop_at]
    else:
        counted = [timing for timing in timings if timing.end >= measure_from and timing.start < stop_at]
    answered = [timing for timing in counted if timing.error is None]
    requests = tokens = 0.0
    for timing in answered:
        if scheduled:
            share = 1.0
        else:
            lifetime = timing.end - timing.start
            overlap = min(timing.end, stop_at) - max(timing.start, measure_from)
            share = max(0.0, overlap) / lifetime if lifetime > 0 else 1.0
        requests += share
        tokens += timing.tokens * share
    errors = Counter(timing.error for timing in counted if timing.error is not None)
    ttft = [timing.first - timing.start for timing in answered if timing.first is not None]
    latency = [timing.end - timing.start for timing in answered]
    gaps = [gap for timing in answered for gap in timing.gaps]
    return {
        "requests": len(answered),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(ERROR_KINDS_SHOWN)),
        "tokens_per_s": tokens / window,
        "requests_per_s": requests / window,
        "mean_tokens": sum(timing.tokens for timing in answered) / len(answered) if answered else math.nan,
        "bunched": sum(timing.bunched for timing in answered),
        "ttft_p50_ms": _ms(ttft, 0.50),
        "ttft_p99_ms": _ms(ttft, 0.99),
        "itl_p50_ms": _ms(gaps, 0.50),
        "itl_p99_ms": _ms(gaps, 0.99),
        "latency_p50_ms": _ms(latency, 0.50),
        "latency_p99_ms": _ms(latency, 0.99),
        **extra,
    }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class _Window:
    """The measured window from measure_from to stop_at after warm-up from begin; its `measuring` and `measured`
    records go out on time, and any not yet out by close() (a timer late by a hair) go out then, so that they always
    precede the point's record."""

    def __init__(self, spec: dict[str, Any], begin: float) -> None:
        loop = asyncio.get_running_loop()
        self.measure_from = begin + spec["warmup"]
        self.stop_at = self.measure_from + spec["duration"]
        self._pending: list[tuple[asyncio.TimerHandle, dict[str, Any]]] = []
        for at, event in ((self.measure_from, "measuring"), (self.stop_at, "measured")):
            record = {"event": event}
            self._pending.append((loop.call_later(at - time.perf_counter(), self._mark, record), record))

    def _mark(self, record: dict[str, Any]) -> None:
        self._pending = [(handle, pending) for handle, pending in self._pending if pending is not record]
        _emit(record)

    def close(self) -> None:
        for handle, record in self._pending:
            handle.cancel()
            _emit(record)
        self._pending = []


async def closed_loop(
    session: Any, spec: dict[str, Any], items: Sequence[WorkItem], concurrency: int
) -> dict[str, Any]:
    """concurrency clients, each sending its next request when the last is answered, for warmup + duration; the
    requests in flight at the end are waited for (each is bounded by the request timeout)."""
    window = _Window(spec, time.perf_counter())
    measure_from, stop_at = window.measure_from, window.stop_at
    timings: list[Timing] = []
    order = itertools.count()

    async def client() -> None:
        while (start := time.perf_counter()) < stop_at:
            timings.append(await send(session, spec, items[next(order) % len(items)], start))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    window.close()
    return summary(timings, measure_from, stop_at, concurrency=concurrency)


async def open_loop(session: Any, spec: dict[str, Any], items: Sequence[WorkItem]) -> dict[str, Any]:
    """Requests sent at a fixed rate whatever the answers; latency runs from each request's scheduled time, so a
    generator that falls behind cannot hide queueing."""
    rate = spec["rate"]
    begin = time.perf_counter() + 0.05
    window = _Window(spec, begin)
    measure_from, stop_at = window.measure_from, window.stop_at
    timings: list[Timing] = []
    lags: list[float] = []

    async def one(index: int, due: float) -> None:
        lags.append(time.perf_counter() - due)
        timings.append(await send(session, spec, items[index % len(items)], due))

    dropped = await fixed_rate(begin, rate, stop_at, measure_from, spec["max_in_flight"], spec["request_timeout"], one)
    window.close()
    point = summary(timings, measure_from, stop_at, scheduled=True, rate=rate, dropped=dropped)
    # How late the generator started its requests: latency includes this, so a large lag means the figures are of a
    # generator that could not keep up, not of the server.
    point["lag_p99_ms"] = _ms(lags, 0.99)
    point["errors"] += dropped
    return point


async def generate_load(spec: dict[str, Any]) -> None:
    import aiohttp

    items = workload(spec["workload"])
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=spec["request_timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        _emit({"event": "started", "time": time.time()})
        if "rate" in spec:
            _emit({"event": "point", **await open_loop(session, spec, items)})
        else:
            for concurrency in spec["concurrency"]:
                _emit({"event": "point", **await closed_loop(session, spec, items, concurrency)})
    _emit({"event": "done"})


def main() -> None:
    parser = bench_parser("bench.serving.generation_load", __doc__)
    parser.add_argument(
        "spec",
        help="the load as JSON: url, kind (sse or json), model, workload, warmup, duration, request_timeout, and "
        "concurrency (a list: closed loops) or rate and max_in_flight (an open loop)",
    )
    asyncio.run(generate_load(json.loads(parser.parse_args().spec)))


if __name__ == "__main__":
    main()
