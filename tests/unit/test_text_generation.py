"""Text out of the engine: stop strings, characters cut short, and the OpenAI endpoints' answers, whole and streamed."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
import torch

from bigmodel.runtime.generation.models import BuiltinGpt
from bigmodel.runtime.generation.text import TextStream
from bigmodel.runtime.generation.tokenizers import ByteTokenizer
from bigmodel.runtime.serving.openai_api import OpenAIEndpoints
from bigmodel.runtime.serving.openai_protocol import SSE_DONE, OpenAIError
from bigmodel.runtime.serving.text_generation import TextGenerator
from bigmodel.runtime.tasks import GPT, generate
from tests.support.models import decisive_gpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> GPT:
    return decisive_gpt(tmp_path_factory.mktemp("gpt"), 16)


def endpoints(model: GPT, *, max_cached_tokens: int = 4096) -> OpenAIEndpoints:
    generator = TextGenerator(
        BuiltinGpt(model, CPU), ByteTokenizer(), max_sequences=8, max_cached_tokens=max_cached_tokens
    )
    return OpenAIEndpoints(generator, "coder", created=1700000000, timeout_s=60)


def greedy(model: GPT, prompt: str, count: int) -> str:
    return generate(model, prompt.encode(), count).decode("utf-8", errors="replace")


def test_a_stop_string_split_across_pieces_is_held_back_and_cut() -> None:
    text = TextStream(ByteTokenizer(), stop=("END",))
    pieces = [text.add(list(part.encode())) for part in ("abc E", "N", "D tail")]
    assert pieces == ["abc ", "", ""] and text.stopped and text.text == "abc "


def test_a_held_back_stop_prefix_that_never_completes_comes_out_at_the_end() -> None:
    text = TextStream(ByteTokenizer(), stop=("END",))
    assert text.add(list(b"xyz EN")) == "xyz "
    assert text.finish() == "EN" and not text.stopped


def test_a_character_cut_short_waits_for_its_other_bytes() -> None:
    text = TextStream(ByteTokenizer())
    euro = "€".encode()
    assert text.add(list(b"a" + euro[:1])) == "a"
    assert text.add(list(euro[1:])) == "€"


def test_bytes_that_are_no_utf8_go_out_at_once_and_only_an_unfinished_tail_waits() -> None:
    text = TextStream(ByteTokenizer())
    # An untrained byte-level model writes such runs; holding them all back would stall the stream to its end.
    assert text.add([0xF7, 0xF7, 0xF7, 0x61, 0xF7]) == "\ufffd\ufffd\ufffda"
    assert text.add([0x62]) == "\ufffdb"


def body(**fields: object) -> bytes:
    return json.dumps({"model": "coder", **fields}).encode()


async def test_a_completion_equals_greedy_generate_with_its_usage(gpt: GPT) -> None:
    answer = await endpoints(gpt).completions(body(prompt="def f(x):", max_tokens=20, temperature=0))
    document = answer.document
    assert document is not None
    completion = openai.types.Completion.model_validate(document)
    assert completion.choices[0].text == greedy(gpt, "def f(x):", 20)
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 20)


async def test_a_stop_string_ends_the_completion_and_frees_the_engine(gpt: GPT) -> None:
    full = greedy(gpt, "ab", 40)
    stop = full[10:13]
    server = endpoints(gpt)
    answer = await server.completions(body(prompt="ab", max_tokens=40, temperature=0, stop=[stop]))
    assert answer.document is not None
    choice = answer.document["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (full[: full.index(stop)], "stop")
    await settled(server)


async def settled(server: OpenAIEndpoints) -> None:
    """Until the engine holds nothing: a request left early is dropped at its next step."""
    engine = server.generator.loop.engine
    for _ in range(200):
        if engine.idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine still holds a request that ended: {engine.stats()}")


async def events(server: OpenAIEndpoints, payload: bytes, chat: bool = False) -> list[bytes]:
    answer = await (server.chat(payload) if chat else server.completions(payload))
    assert answer.events is not None
    return [event async for event in answer.events]


async def test_a_streamed_completion_is_the_whole_one_in_pieces_then_usage_and_done(gpt: GPT) -> None:
    server = endpoints(gpt)
    stream = await events(
        server, body(prompt="import", max_tokens=30, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert stream[-1] == SSE_DONE
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in stream[:-1]]
    # The client reads chunks without validating them (a streamed choice has no finish_reason until the last).
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"]) == greedy(gpt, "import", 30)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:-1]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 30


async def test_a_chat_without_a_template_is_a_transcript_ending_in_the_assistants_turn(gpt: GPT) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    stream = await events(endpoints(gpt), body(messages=messages, max_tokens=8, temperature=0, stream=True), chat=True)
    chunks = [
        openai.types.chat.ChatCompletionChunk.model_validate_json(event.removeprefix(b"data: "))
        for event in stream[:-1]
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == greedy(gpt, "system: Be brief.\nuser: hi\nassistant:", 8)


async def test_a_request_larger_than_the_cache_is_400_naming_max_tokens(gpt: GPT) -> None:
    with pytest.raises(OpenAIError) as caught:
        await endpoints(gpt, max_cached_tokens=8).completions(body(prompt="hi", max_tokens=8, temperature=0))
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "max_tokens", "context_length_exceeded")
    assert "this server holds 8 " in error.message
