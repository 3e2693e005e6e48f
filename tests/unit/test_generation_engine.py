"""The continuous-batching engine: what it generates equals generate() one prompt at a time, whatever the batch."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import torch

from bigmodel.runtime.generation.batch_cache import BatchCache
from bigmodel.runtime.generation.engine import (
    ERROR,
    IDLE,
    LENGTH,
    Engine,
    GenerationRequest,
    Load,
    Output,
    RequestRefused,
)
from bigmodel.runtime.generation.loop import EngineLoop
from bigmodel.runtime.generation.models import BuiltinGpt
from bigmodel.runtime.generation.sampling import Sampling
from bigmodel.runtime.tasks import GPT, generate
from tests.support.models import decisive_gpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
CONTEXT = 16


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> GPT:
    return decisive_gpt(tmp_path_factory.mktemp("gpt"), CONTEXT)


def engine_of(model: GPT, *, max_sequences: int = 64, max_cached_tokens: int = 4096) -> Engine:
    return Engine(BuiltinGpt(model, CPU), max_sequences=max_sequences, max_cached_tokens=max_cached_tokens)


class Collected:
    """What a request's sink received."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.outputs = 0

    def __call__(self, output: Output) -> None:
        self.tokens.extend(output.tokens)
        self.finish = output.finish
        self.outputs += 1

    @property
    def text(self) -> bytes:
        return bytes(self.tokens)


GREEDY = Sampling()


def request(prompt: bytes, max_tokens: int, sampling: Sampling = GREEDY) -> GenerationRequest:
    return GenerationRequest(tuple(prompt), max_tokens, sampling)


def run_all(engine: Engine, steps: int = 1000) -> None:
    for _ in range(steps):
        if engine.idle:
            return
        engine.step()
    raise AssertionError(f"the engine still had work after {steps} steps: {engine.stats()}")


# Prompt lengths below, at and past the context (which slides), and lengths that cross the context while generating.
PROMPTS = [(b"a", 5), (b"def f(x):", 12), (b"0123456789abcdef", 4), (b"x" * 23, 6), (b"import os\n", 9), (b"q", 30)]


def test_a_mixed_batch_generates_what_generate_gives_one_prompt_at_a_time(gpt: GPT) -> None:
    engine = engine_of(gpt)
    sinks = [Collected() for _ in PROMPTS]
    for (prompt, count), sink in zip(PROMPTS, sinks, strict=True):
        engine.submit(request(prompt, count), sink)
    run_all(engine)
    for (prompt, count), sink in zip(PROMPTS, sinks, strict=True):
        assert sink.text == generate(gpt, prompt, count), prompt
        assert sink.finish == LENGTH
    assert engine.stats().cached_tokens == 0


@pytest.fixture(scope="module")
def long_gpt(tmp_path_factory: pytest.TempPathFactory) -> GPT:
    return decisive_gpt(tmp_path_factory.mktemp("long-gpt"), 96)


def test_sequences_that_take_the_places_of_finished_ones_generate_what_they_would_alone(long_gpt: GPT) -> None:
    # Three places for many requests: a long one keeps the cache wide while short ones come and go, each newcomer
    # taking the slot a finished one left (in place, or after the cache is compacted).
    engine = engine_of(long_gpt, max_sequences=3)
    requests = [(b"L" * 40, 50)] + [(bytes([65 + index]) * (1 + index % 7), 3 + index % 5) for index in range(12)]
    sinks = [Collected() for _ in requests]
    for (prompt, count), sink in zip(requests, sinks, strict=True):
        engine.submit(request(prompt, count), sink)
    run_all(engine)
    assert [sink.text for sink in sinks] == [generate(long_gpt, prompt, count) for prompt, count in requests]
    assert engine.stats().cached_tokens == 0


def row(length: int, value: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A one-layer prefill cache of one row: 2 heads, length tokens, width 4, every entry value."""
    keys = torch.full((1, 2, length, 4), value)
    return [(keys, keys.clone())]


def test_a_joiner_takes_a_free_slot_in_place_and_a_half_empty_cache_is_compacted() -> None:
    cache: BatchCache[str] = BatchCache()
    cache.add([("a", row(5, 1.0), 5), ("b", row(3, 2.0), 3), ("c", row(4, 3.0), 4)])
    storage = cache.layers[0][0].data_ptr()
    cache.release([1])
    cache.add([("d", row(2, 4.0), 2)])
    assert cache.layers[0][0].data_ptr() == storage, "the joiner's cache was copied in with the whole cache"
    assert cache.owners == ["a", "d", "c"] and cache.lengths == [5, 2, 4]
    keys = cache.in_use()[0][0]
    assert keys[1, 0, -2:, 0].tolist() == [4.0, 4.0] and keys[0, 0, :, 0].tolist() == [1.0] * 5
    assert cache.key_mask(1)[1].tolist() == [False, False, False, True, True, True]
    cache.release([0, 2])
    assert (cache.owners, cache.lengths, cache.width) == (["d"], [2], 2), "a cache with one row in three held"
    assert cache.in_use()[0][0][0, 0, :, 0].tolist() == [4.0, 4.0]


def test_a_request_that_joins_mid_batch_finishes_without_waiting_for_the_batch(gpt: GPT) -> None:
    engine = engine_of(gpt)
    long = Collected()
    engine.submit(request(b"abc", 12), long)
    for _ in range(3):
        engine.step()
    short = Collected()
    engine.submit(request(b"hello", 3), short)
    steps = 0
    while short.finish is None:
        engine.step()
        steps += 1
    assert steps <= 2, "a 3-token request took more than two steps: it waited for the batch"
    assert long.finish is None, "the long request finished first: the short one did not join the running batch"
    assert short.text == generate(gpt, b"hello", 3)
    run_all(engine)
    assert long.text == generate(gpt, b"abc", 12)


def test_a_cancelled_request_frees_its_cache_at_the_next_step(gpt: GPT) -> None:
    engine = engine_of(gpt)
    first, second = Collected(), Collected()
    handle = engine.submit(request(b"abcdef", 8), first)
    engine.submit(request(b"xy", 8), second)
    engine.step()
    engine.step()
    assert engine.stats().running == 2
    handle.cancel()
    engine.step()
    stats = engine.stats()
    assert stats.running == 1 and stats.cached_tokens == len(b"xy") + second.tokens.__len__() - 1
    run_all(engine)
    assert engine.stats().cached_tokens == 0 and engine.idle
    assert first.finish is None, "a cancelled request went on receiving tokens"
    assert second.text == generate(gpt, b"xy", 8)


def test_requests_past_the_sequence_bound_wait_their_turn(gpt: GPT) -> None:
    engine = engine_of(gpt, max_sequences=2)
    sinks = [Collected() for _ in range(3)]
    for sink in sinks:
        engine.submit(request(b"ab", 4), sink)
    engine.step()
    assert engine.stats().running == 2 and engine.stats().waiting == 1
    run_all(engine)
    assert all(sink.text == generate(gpt, b"ab", 4) for sink in sinks)


def test_the_cache_bound_holds_requests_back_and_refuses_what_can_never_fit(gpt: GPT) -> None:
    engine = engine_of(gpt, max_cached_tokens=12)
    first, second = Collected(), Collected()
    engine.submit(request(b"abcd", 4), first)  # reserves 8 of the 12 tokens
    engine.submit(request(b"abcd", 4), second)
    engine.step()
    assert engine.stats().running == 1 and engine.stats().reserved_tokens <= 12
    run_all(engine)
    assert first.text == second.text == generate(gpt, b"abcd", 4)
    with pytest.raises(RequestRefused, match="need 13 cache tokens; this server holds 12"):
        engine.submit(request(b"abcdefghi", 4), Collected())


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(gpt: GPT) -> None:
    sampling = Sampling(temperature=1.0, top_p=0.9, seed=7)
    alone = Collected()
    engine = engine_of(gpt)
    engine.submit(request(b"seed", 10, sampling), alone)
    run_all(engine)
    batched = Collected()
    for prompt, count in PROMPTS:
        engine.submit(request(prompt, count, Sampling(temperature=0.8, seed=1)), Collected())
    engine.submit(request(b"seed", 10, sampling), batched)
    run_all(engine)
    assert batched.tokens == alone.tokens
    assert alone.text != generate(gpt, b"seed", 10), "sampling at temperature 1 gave the greedy text"


def test_a_vanishing_top_p_keeps_only_the_most_likely_token(gpt: GPT) -> None:
    sink = Collected()
    engine = engine_of(gpt)
    engine.submit(request(b"top", 8, Sampling(temperature=1.5, top_p=1e-9)), sink)
    run_all(engine)
    assert sink.text == generate(gpt, b"top", 8)


class Broken(BuiltinGpt):
    def prefill(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory")


def test_a_model_that_fails_ends_its_requests_with_the_reason_and_the_loop_goes_on(gpt: GPT) -> None:
    engine = Engine(Broken(gpt, CPU), max_sequences=4, max_cached_tokens=256)
    loop = EngineLoop(engine)
    with pytest.raises(RuntimeError, match="the model failed: RuntimeError: out of memory"):
        loop.run([request(b"a", 3), request(b"b", 3)], timeout_s=30)
    engine.model = BuiltinGpt(gpt, CPU)
    assert loop.run([request(b"a", 3)], timeout_s=30) == [list(generate(gpt, b"a", 3))]


async def test_a_stream_is_incremental_and_a_reader_that_leaves_frees_its_place(gpt: GPT) -> None:
    engine = engine_of(gpt)
    loop = EngineLoop(engine)
    outputs = [output async for output in loop.stream(request(b"stream", 20))]
    assert len(outputs) > 1, "all tokens came in one output: the stream was not incremental"
    assert bytes(token for output in outputs for token in output.tokens) == generate(gpt, b"stream", 20)
    assert outputs[-1].finish == LENGTH
    stream = loop.stream(request(b"leave", 200))
    await anext(stream)
    await stream.aclose()
    for _ in range(100):
        if engine.idle:
            break
        await asyncio.sleep(0.05)
    assert engine.idle and engine.stats().cached_tokens == 0, "a stream left early kept its place in the batch"
    assert ERROR not in {output.finish for output in outputs}


def test_the_load_is_the_tokens_each_sequence_has_yet_to_generate_waiting_or_running(gpt: GPT) -> None:
    # Two places for three requests; prompts of other lengths than max_tokens, so that counting them would show.
    engine = engine_of(gpt, max_sequences=2)
    asked = [(b"ab", 10), (b"abcdefgh", 6), (b"x", 8)]
    sinks = [Collected() for _ in asked]
    handles = [engine.submit(request(prompt, count), sink) for (prompt, count), sink in zip(asked, sinks, strict=True)]
    assert engine.load() == Load(running=0, waiting=3, pending_tokens=24), "submitted requests count before a step"
    engine.step()
    left = sum(count - len(sink.tokens) for (_, count), sink in zip(asked, sinks, strict=True))
    assert left < 24, "the first step generated nothing"
    assert engine.load() == Load(running=2, waiting=1, pending_tokens=left)
    handles[0].cancel()
    engine.step()
    left = sum(count - len(sink.tokens) for (_, count), sink in zip(asked[1:], sinks[1:], strict=True))
    assert engine.load() == Load(running=2, waiting=0, pending_tokens=left), "a cancelled request still counted"
    run_all(engine)
    assert engine.load() == IDLE


def test_another_thread_sees_the_load_only_shrink_while_the_engine_works_it_off(gpt: GPT) -> None:
    # Everything is submitted before the loop starts: from then on the work only goes down. A reader that caught a
    # request between the inbox and the batch (counted in neither) would see it dip and come back.
    engine = engine_of(gpt, max_sequences=3)
    asked = [(bytes([97 + index]) * (1 + index), 5 + 3 * index) for index in range(8)]
    for prompt, count in asked:
        engine.submit(request(prompt, count), Collected())
    total = sum(count for _, count in asked)
    loads: list[Load] = []
    EngineLoop(engine)
    engine.wake()
    deadline = time.monotonic() + 60
    while (not loads or loads[-1] != IDLE) and time.monotonic() < deadline:
        loads.append(engine.load())
        time.sleep(0)
    assert loads[-1] == IDLE, f"the engine still had work after 60 s: {loads[-1]}"
    pending = [load.pending_tokens for load in loads]
    assert pending[0] <= total, pending
    assert all(later <= earlier for earlier, later in itertools.pairwise(pending)), "the load grew back"
    assert len(set(pending)) > 2, "the reader saw no work in between: it did not run alongside the engine"
