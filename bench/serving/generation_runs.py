"""The three systems of `python -m bench.serve_generation`, each under the same closed loops of the same workload:

  (a) engine_in_process  the generation engine (EngineLoop over BuiltinGpt) in this process, no HTTP: `concurrency`
                         asyncio tasks, each streaming its requests back to back. The limit a server could reach.
  (b) and (c)            serve_series: on one embedded Ray, (b) request_level's Serve app, then (c) the product's
                         Serve app exactly as the operator deploys it, each with the same replica resources and
                         maxBatchSize; the load generator (generation_load) is a process of its own.

Every function appends each point to the list it is given as soon as it is measured, so that an interrupted run still
reports what it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from bench.serving.children import child, cpu_seconds
from bench.serving.generation_load import JSON, SSE, EventStream, Timing, WorkItem, request_body, settle, summary
from bench.serving.generation_report import LABELS, point_line
from bench.serving.harness import MODEL_NAME, START_TIMEOUT_S, Bench, free_port
from bench.serving.loadgen import JSON_HEADERS
from bench.serving.model import gpt_config
from bench.serving.ray_serve import ONE_REPLICA, deploy_config, local_config, serve_pids, service_spec, serving_ray

REQUEST_LEVEL_APP = "bench-request-level"
CONTINUOUS_APP = "bench-continuous"
# Beyond warm-up, window and the slowest request: the load generator's start and its last records.
RECORD_SLACK_S = 30.0
# Requests of the workload generated both ways in process before any load, to see that (a) and (b) compute the same.
AGREEMENT_REQUESTS = 2
OPEN_LOOP_IN_FLIGHT = 4096


def export_gpt(args: Any, storage: str) -> str:
    """An untrained built-in GPT of the run's shape, exported as a job exports one (as model.export_bench_model
    does, without the predictor it imports for its sample instances); returns its URI."""
    import torch

    from bigmodel.runtime.artifacts import export_model
    from bigmodel.runtime.tasks import build_model_from_config

    torch.manual_seed(0)
    config = gpt_config(args)
    return export_model(storage, build_model_from_config(config), config, {})


def _cpu_ms(cpu_s: float, point: dict[str, Any], duration: float) -> float:
    """CPU milliseconds per answered request of a window, requests counted as the point counts them."""
    answered = point["requests_per_s"] * duration
    return cpu_s / answered * 1000 if answered > 0 else math.nan


def say_point(bench: Bench, key: str, point: dict[str, Any]) -> None:
    where = f"{point['rate']:.2f} req/s offered" if "rate" in point else f"concurrency {point['concurrency']:3d}"
    bench.say(f"{LABELS[key]:<20} {where}: {point_line(point)}")


def engine_in_process(bench: Bench, model: Any, items: Sequence[WorkItem], points: list[dict[str, Any]]) -> None:
    """(a): the engine that a replica of (c) runs, driven directly by `concurrency` streaming clients."""
    import torch

    from bench.serving.request_level import GenerationRequest as RequestLevelRequest
    from bench.serving.request_level import generate_batch
    from bigmodel.runtime.generation.engine import Engine, GenerationRequest
    from bigmodel.runtime.generation.loop import EngineLoop
    from bigmodel.runtime.generation.models import BuiltinGpt

    args = bench.args
    # The device a replica would use.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    engine = Engine(
        BuiltinGpt(model, device), max_sequences=args.max_batch_size, max_cached_tokens=args.max_cached_tokens
    )
    loop = EngineLoop(engine)
    requests = [GenerationRequest(tuple(item.prompt.encode("utf-8")), item.max_tokens) for item in items]

    # The baseline must compute what the engine computes, or their speeds say nothing.
    sample = requests[:AGREEMENT_REQUESTS]
    engine_tokens = loop.run(sample, timeout_s=args.request_timeout)
    baseline = generate_batch(
        model, [RequestLevelRequest(bytes(request.prompt), request.max_tokens) for request in sample], device
    )
    same = [bytes(tokens) == continuation for tokens, continuation in zip(engine_tokens, baseline, strict=True)]
    bench.say(
        f"engine and request-level generation agree on {sum(same)} of the first {len(same)} requests "
        "(greedy; an untrained model's nearly tied logits may still part them)"
    )

    for concurrency in args.concurrency:
        bound = args.warmup + args.duration + args.request_timeout + RECORD_SLACK_S
        try:
            point = asyncio.run(asyncio.wait_for(_engine_point(loop, requests, concurrency, args), bound))
        except asyncio.TimeoutError:
            raise RuntimeError(f"(a) at concurrency {concurrency} did not finish within {bound:.0f} s") from None
        points.append(point)
        say_point(bench, "a", point)


async def _engine_point(loop: Any, requests: Sequence[Any], concurrency: int, args: Any) -> dict[str, Any]:
    running = asyncio.get_running_loop()
    begin = time.perf_counter()
    measure_from, stop_at = begin + args.warmup, begin + args.warmup + args.duration
    # This process's CPU time over the window: the engine's thread and the clients' event loop.
    cpu: dict[str, float] = {}
    running.call_later(args.warmup, lambda: cpu.setdefault("from", time.process_time()))
    running.call_later(args.warmup + args.duration, lambda: cpu.setdefault("to", time.process_time()))
    timings: list[Timing] = []
    order = itertools.count()

    async def one(request: Any, start: float) -> Timing:
        chunks: list[tuple[float, int]] = []
        error = None
        # Closed on the way out, which cancels the request if it did not finish (a timeout).
        async with contextlib.aclosing(loop.stream(request)) as outputs:
            async for output in outputs:
                if output.tokens:
                    chunks.append((time.perf_counter(), len(output.tokens)))
                error = output.error or error
        timing = settle(Timing(start, time.perf_counter()), chunks, None)
        timing.error = error
        return timing

    async def client() -> None:
        while (start := time.perf_counter()) < stop_at:
            request = requests[next(order) % len(requests)]
            try:
                timings.append(await asyncio.wait_for(one(request, start), args.request_timeout))
            except asyncio.TimeoutError:
                timings.append(Timing(start, time.perf_counter(), error=f"no answer within {args.request_timeout:g} s"))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    point = summary(timings, measure_from, stop_at, concurrency=concurrency)
    if "from" in cpu and "to" in cpu:
        point["server_cpu_ms"] = _cpu_ms(cpu["to"] - cpu["from"], point, args.duration)
    return point


def load_spec(bench: Bench, url: str, kind: str, **spec: Any) -> dict[str, Any]:
    """The load generator's spec: this run's workload, warm-up, duration and concurrency unless spec overrides them;
    an open loop when spec has a rate."""
    args = bench.args
    return {
        "url": url,
        "kind": kind,
        "model": MODEL_NAME,
        "workload": workload_spec(args),
        "warmup": args.warmup,
        "duration": args.duration,
        "request_timeout": args.request_timeout,
        "concurrency": args.concurrency,
        "max_in_flight": OPEN_LOOP_IN_FLIGHT,
        **spec,
    }


def workload_spec(args: Any) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "count": args.requests,
        "prompt_bytes": list(args.prompt_bytes),
        "max_tokens": list(args.max_tokens),
    }


def generation_load(
    bench: Bench, spec: dict[str, Any], key: str, server_pids: list[int], points: list[dict[str, Any]]
) -> None:
    """Points from a load generator process; each also gets the CPU time that the server's processes and the
    generator spent in its window per answered request."""
    per_record = spec["warmup"] + spec["duration"] + spec["request_timeout"] + RECORD_SLACK_S
    with child("generation_load", json.dumps(spec)) as generator:
        generator.record(START_TIMEOUT_S)
        client_pids = [generator.process.pid]
        marks: tuple[float, float] | None = None
        ends: tuple[float, float] | None = None
        while (record := generator.record(per_record))["event"] != "done":
            if record["event"] == "measuring":
                marks, ends = (cpu_seconds(server_pids), cpu_seconds(client_pids)), None
                continue
            if record["event"] == "measured":
                ends = (cpu_seconds(server_pids), cpu_seconds(client_pids))
                continue
            if marks is not None and ends is not None:
                record["server_cpu_ms"] = _cpu_ms(ends[0] - marks[0], record, spec["duration"])
                record["client_cpu_ms"] = _cpu_ms(ends[1] - marks[1], record, spec["duration"])
            marks = ends = None
            points.append(record)
            say_point(bench, key, record)


def first_answer(bench: Bench, url: str, kind: str, item: WorkItem) -> str:
    """One request before any load: the server at url answers it in full; returns the generated text."""
    request = urllib.request.Request(
        url, data=request_body({"kind": kind, "model": MODEL_NAME}, item), headers=JSON_HEADERS
    )
    # No proxies: an HTTP_PROXY in the environment must not carry a request for the loopback interface elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=bench.args.request_timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url} answered {error.code}: {error.read()[:300]!r}") from None
    if kind == SSE:
        events = EventStream()
        for line in body.splitlines(keepends=True):
            events.line(line, 0.0)
        events.end(0.0)
        timing = events.timing(0.0, 0.0)
        if timing.error is not None:
            raise RuntimeError(f"{url}: the first request's stream: {timing.error}")
        text, tokens = "".join(events.text), timing.tokens
    else:
        document = json.loads(body)
        text, tokens = document["text"], document["completion_tokens"]
    if tokens != item.max_tokens:
        bench.say(f"note: {url} generated {tokens} tokens for max_tokens {item.max_tokens}")
    return text


def request_level_config(config: dict[str, Any], app: Any) -> dict[str, Any]:
    """The operator's Serve config of (c) (its ServeAppArgs app) with baseline (b)'s application in place of the
    product's: the same deployment options (replica resources, max_ongoing_requests, queue, timeout, batching)."""
    from bench.serving.request_level import REQUEST_LEVEL_IMPORT_PATH, RequestLevelArgs

    config = copy.deepcopy(config)
    application = config["applications"][0]
    application["import_path"] = REQUEST_LEVEL_IMPORT_PATH
    application["args"] = RequestLevelArgs(
        model_uri=app.model_uri, max_batch_size=app.max_batch_size, batch_wait_timeout_s=app.batch_wait_timeout_s
    ).model_dump()
    return config


@contextlib.contextmanager
def _deployed(bench: Bench, name: str, config: dict[str, Any], what: str) -> Iterator[str]:
    """config deployed for the length of the block; yields its base URL. The application is deleted after it."""
    from ray import serve

    from bigmodel.runtime.serving import local

    deploy_config(bench, name, config, what)
    try:
        yield local.base_url(config)
    finally:
        serve.delete(name)


def serve_series(bench: Bench, items: Sequence[WorkItem], results: dict[str, Any]) -> None:
    """(b), then (c) and the open loop at half of (c)'s peak request rate, on one embedded Ray."""
    args = bench.args
    port = free_port()
    spec = service_spec(
        bench,
        batch=args.max_batch_size,
        replicas=ONE_REPLICA,
        limits={"timeoutSeconds": args.request_timeout},
        maxCachedTokens=args.max_cached_tokens,
    )
    answers: dict[str, str] = {}
    with serving_ray(bench, spec):
        if "b" in args.systems:
            # The operator's config for the same spec (replica resources, max_ongoing_requests, queue, timeout),
            # with the request-level application in place of the product's.
            config, app = local_config(bench, REQUEST_LEVEL_APP, spec, port)
            config = request_level_config(config, app)
            what = f"request-level, @serve.batch max_batch_size={app.max_batch_size} wait={args.wait_timeout_ms} ms"
            with _deployed(bench, REQUEST_LEVEL_APP, config, what) as base:
                url = f"{base}/v1/completions"
                answers["b"] = first_answer(bench, url, JSON, items[0])
                generation_load(
                    bench,
                    load_spec(bench, url, JSON),
                    "b",
                    serve_pids(REQUEST_LEVEL_APP),
                    results.setdefault("b", []),
                )
        if "c" in args.systems:
            config, app = local_config(bench, CONTINUOUS_APP, spec, port)
            what = f"the product's app, max_batch_size={app.max_batch_size} max_cached_tokens={app.max_cached_tokens}"
            with _deployed(bench, CONTINUOUS_APP, config, what) as base:
                url = f"{base}/v1/completions"
                answers["c"] = first_answer(bench, url, SSE, items[0])
                if "b" in answers:
                    agree = "the same" if answers["b"] == answers["c"] else "different"
                    bench.say(f"(b) and (c) answered the first request with {agree} text")
                pids = serve_pids(CONTINUOUS_APP)
                points = results.setdefault("c", [])
                generation_load(bench, load_spec(bench, url, SSE), "c", pids, points)
                peak = max(points, key=lambda point: point["requests_per_s"], default=None)
                if peak is not None and peak["requests_per_s"] > 0 and not args.no_open_loop:
                    results["peak"] = {"requests_per_s": peak["requests_per_s"], "concurrency": peak["concurrency"]}
                    opened: list[dict[str, Any]] = []
                    rate = peak["requests_per_s"] / 2
                    generation_load(bench, load_spec(bench, url, SSE, rate=rate), "open", pids, opened)
                    if opened:
                        results["open"] = opened[0]
