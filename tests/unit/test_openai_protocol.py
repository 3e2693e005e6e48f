"""OpenAI-compatible request parsing and responses: every one-line refusal, the defaults, and the official `openai`
client reading each response builder's output, whole or streamed, through an in-process transport (no network)."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from bigmodel.runtime.serving.openai_protocol import (
    SSE_DONE,
    SSE_MEDIA_TYPE,
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    SamplingSettings,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    default_chat_prompt,
    error_document,
    error_document_for,
    model_card,
    model_list,
    new_request_id,
    parse_body,
    parse_chat_request,
    parse_completion_request,
    sse_event,
    usage,
    usage_chunk,
)

# openai 1.x is built on httpx, later releases on its fork httpx2; the mock transport must come from the client's own.
httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-gpt"
LIMIT = 512
CREATED = 1_700_000_000
ABSENT = object()
PIECES = ("Hello", ", ", "world")
USER = {"role": "user", "content": "Hi"}

Parser = Callable[[Any, str, int], Any]


def with_fields(base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in (base | fields).items() if value is not ABSENT}


def completion(**fields: Any) -> dict[str, Any]:
    return with_fields({"model": MODEL, "prompt": "Once upon"}, fields)


def chat(**fields: Any) -> dict[str, Any]:
    return with_fields({"model": MODEL, "messages": [USER]}, fields)


def refused(parse: Parser, document: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        parse(document, MODEL, LIMIT)
    assert "\n" not in caught.value.message, "the message must stay on one line"
    return caught.value


def check_400(parse: Parser, document: Any, param: str | None, message: str) -> None:
    error = refused(parse, document)
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", None), error.message
    assert error.message == message
    assert error.param == param


# Refused alike by both endpoints: (fields, param, message).
SHARED_REFUSALS = [
    pytest.param(
        {"model": ABSENT}, "model", 'model: required field is missing; this server serves "tiny-gpt"', id="no-model"
    ),
    pytest.param(
        {"model": None}, "model", 'model: required field is missing; this server serves "tiny-gpt"', id="null-model"
    ),
    pytest.param({"model": 7}, "model", "model: must be a string, not a number", id="model-number"),
    pytest.param(
        {"temprature": 0.5}, "temprature", 'Unrecognized request argument supplied: "temprature"', id="misspelt"
    ),
    pytest.param({"a\nb": 1}, "a\nb", 'Unrecognized request argument supplied: "a\\nb"', id="line-break-key"),
    pytest.param({"store": True}, "store", 'Unrecognized request argument supplied: "store"', id="unimplemented"),
    pytest.param({"max_tokens": 0}, "max_tokens", "max_tokens: must be a whole number from 1 to 512, not 0", id="mt-0"),
    pytest.param(
        {"max_tokens": 513}, "max_tokens", "max_tokens: must be a whole number from 1 to 512, not 513", id="mt-limit"
    ),
    pytest.param(
        {"max_tokens": 16.0}, "max_tokens", "max_tokens: must be a whole number from 1 to 512, not 16.0", id="mt-float"
    ),
    pytest.param(
        {"max_tokens": True}, "max_tokens", "max_tokens: must be a whole number from 1 to 512, not true", id="mt-bool"
    ),
    pytest.param(
        {"max_tokens": "16"}, "max_tokens", 'max_tokens: must be a whole number from 1 to 512, not "16"', id="mt-text"
    ),
    pytest.param(
        {"temperature": 2.5}, "temperature", "temperature: must be a number from 0 to 2, not 2.5", id="temp-high"
    ),
    pytest.param(
        {"temperature": -0.1}, "temperature", "temperature: must be a number from 0 to 2, not -0.1", id="temp-low"
    ),
    pytest.param(
        {"temperature": math.nan}, "temperature", "temperature: must be a number from 0 to 2, not NaN", id="temp-nan"
    ),
    pytest.param(
        {"temperature": True}, "temperature", "temperature: must be a number from 0 to 2, not true", id="temp-bool"
    ),
    pytest.param(
        {"temperature": "1"}, "temperature", 'temperature: must be a number from 0 to 2, not "1"', id="temp-text"
    ),
    pytest.param({"top_p": 0}, "top_p", "top_p: must be a number above 0 and at most 1, not 0", id="top-p-0"),
    pytest.param({"top_p": 1.5}, "top_p", "top_p: must be a number above 0 and at most 1, not 1.5", id="top-p-high"),
    pytest.param(
        {"top_p": math.inf}, "top_p", "top_p: must be a number above 0 and at most 1, not Infinity", id="top-p-inf"
    ),
    pytest.param({"seed": 1.5}, "seed", "seed: must be a whole number that fits in 64 bits, not 1.5", id="seed-float"),
    pytest.param(
        {"seed": 2**63},
        "seed",
        "seed: must be a whole number that fits in 64 bits, not 9223372036854775808",
        id="seed-too-big",
    ),
    pytest.param(
        {"seed": False}, "seed", "seed: must be a whole number that fits in 64 bits, not false", id="seed-bool"
    ),
    pytest.param({"stop": 5}, "stop", "stop: must be a string or a list of strings, not a number", id="stop-number"),
    pytest.param({"stop": ""}, "stop", 'stop: must be a non-empty string, not ""', id="stop-empty"),
    pytest.param({"stop": ["a", ""]}, "stop[1]", 'stop[1]: must be a non-empty string, not ""', id="stop-item-empty"),
    pytest.param({"stop": ["a", 1]}, "stop[1]", "stop[1]: must be a non-empty string, not 1", id="stop-item-number"),
    pytest.param(
        {"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop: at most 4 stop sequences, got 5", id="stop-too-many"
    ),
    pytest.param({"stream": "yes"}, "stream", 'stream: must be true or false, not "yes"', id="stream-text"),
    pytest.param(
        {"stream_options": {"include_usage": True}},
        "stream_options",
        "stream_options: only allowed when stream is true",
        id="options-without-stream",
    ),
    pytest.param(
        {"stream": False, "stream_options": {}},
        "stream_options",
        "stream_options: only allowed when stream is true",
        id="options-stream-false",
    ),
    pytest.param(
        {"stream": True, "stream_options": []},
        "stream_options",
        "stream_options: must be a JSON object, not a list",
        id="options-list",
    ),
    pytest.param(
        {"stream": True, "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        "stream_options.include_usage: must be true or false, not 1",
        id="include-usage-number",
    ),
    pytest.param(
        {"stream": True, "stream_options": {"include_obfuscation": False}},
        "stream_options.include_obfuscation",
        'stream_options: unknown field "include_obfuscation"; expected include_usage',
        id="options-unknown",
    ),
    pytest.param({"n": 2}, "n", "n: only 1 is supported: this server samples one sequence per request; got 2", id="n"),
    pytest.param(
        {"n": True}, "n", "n: only 1 is supported: this server samples one sequence per request; got true", id="n-bool"
    ),
    pytest.param(
        {"presence_penalty": 0.5},
        "presence_penalty",
        "presence_penalty: only 0 is supported: this server applies no penalties; got 0.5",
        id="presence-penalty",
    ),
    pytest.param(
        {"frequency_penalty": -1},
        "frequency_penalty",
        "frequency_penalty: only 0 is supported: this server applies no penalties; got -1",
        id="frequency-penalty",
    ),
    pytest.param(
        {"logit_bias": {"50256": -100}},
        "logit_bias",
        "logit_bias: biasing tokens is not supported; got {'50256': -100}",
        id="logit-bias",
    ),
]

COMPLETION_REFUSALS = [
    pytest.param(
        {"max_completion_tokens": 8},
        "max_completion_tokens",
        'Unrecognized request argument supplied: "max_completion_tokens"',
        id="chat-only-field",
    ),
    pytest.param({"prompt": ABSENT}, "prompt", "prompt: required field is missing", id="no-prompt"),
    pytest.param({"prompt": ""}, "prompt", "prompt: must not be empty", id="empty-prompt"),
    pytest.param({"prompt": [""]}, "prompt[0]", "prompt[0]: must not be empty", id="empty-prompt-in-list"),
    pytest.param({"prompt": []}, "prompt", "prompt: must be a string or a list of one string, not []", id="no-prompts"),
    pytest.param(
        {"prompt": 7}, "prompt", "prompt: must be a string or a list of one string, not 7", id="prompt-number"
    ),
    pytest.param(
        {"prompt": ["a", 1]},
        "prompt",
        "prompt: must be a string or a list of one string, not ['a', 1]",
        id="prompt-mixed-list",
    ),
    pytest.param(
        {"prompt": [15496, 11]}, "prompt", "prompt: token-id prompts are not supported; send the text", id="token-ids"
    ),
    pytest.param(
        {"prompt": [[15496], [11]]},
        "prompt",
        "prompt: token-id prompts are not supported; send the text",
        id="token-id-lists",
    ),
    pytest.param(
        {"prompt": ["a", "b"]},
        "prompt",
        "prompt: 2 prompts in one request are not supported; send one per request",
        id="several-prompts",
    ),
    pytest.param(
        {"best_of": 3},
        "best_of",
        "best_of: only 1 is supported: this server samples one sequence per request; got 3",
        id="best-of",
    ),
    pytest.param({"echo": True}, "echo", "echo: echoing the prompt is not supported; got true", id="echo"),
    pytest.param({"echo": 0}, "echo", "echo: echoing the prompt is not supported; got 0", id="echo-number"),
    pytest.param({"logprobs": 0}, "logprobs", "logprobs: log probabilities are not supported; got 0", id="logprobs"),
    pytest.param(
        {"suffix": "end"}, "suffix", 'suffix: a suffix (inserting text) is not supported; got "end"', id="suffix"
    ),
]

CHAT_REFUSALS = [
    pytest.param({"best_of": 1}, "best_of", 'Unrecognized request argument supplied: "best_of"', id="completion-field"),
    pytest.param({"messages": ABSENT}, "messages", "messages: required field is missing", id="no-messages"),
    pytest.param({"messages": "Hi"}, "messages", "messages: must be a list of messages, not a string", id="text"),
    pytest.param({"messages": []}, "messages", "messages: must hold at least one message", id="empty"),
    pytest.param(
        {"messages": ["Hi"]},
        "messages[0]",
        "messages[0]: must be an object with a role and content, not a string",
        id="message-text",
    ),
    pytest.param(
        {"messages": [{"content": "Hi"}]}, "messages[0].role", "messages[0].role: required field is missing", id="role"
    ),
    pytest.param(
        {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]},
        "messages[0].tool_call_id",
        'messages[0]: unknown field "tool_call_id"; expected role, content, name',
        id="tool-message",
    ),
    pytest.param(
        {"messages": [{"role": "tool", "content": "42"}]},
        "messages[0].role",
        'messages[0].role: must be one of system, developer, user, assistant; got "tool"',
        id="tool-role",
    ),
    pytest.param(
        {"messages": [USER, {"role": "assistant"}]},
        "messages[1].content",
        "messages[1].content: required field is missing",
        id="no-content",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": None}]},
        "messages[0].content",
        "messages[0].content: required field is missing",
        id="null-content",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "messages[0].content: must be a string or a list of text parts, not a number",
        id="content-number",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": ["Hi"]}]},
        "messages[0].content[0]",
        'messages[0].content[0]: must be an object such as {"type": "text", "text": ...}, not a string',
        id="part-text",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    ],
                }
            ]
        },
        "messages[0].content[1].type",
        'messages[0].content[1].type: only text parts are supported; got "image_url"',
        id="image-part",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "messages[0].content[0].type",
        'messages[0].content[0].type: only text parts are supported; got "input_audio"',
        id="audio-part",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
        "messages[0].content[0].type",
        "messages[0].content[0].type: only text parts are supported; got null",
        id="part-without-type",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
        "messages[0].content[0].text: must be a string, not null",
        id="part-without-text",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]}]},
        "messages[0].content[0].cache_control",
        'messages[0].content[0]: unknown field "cache_control"; expected type, text',
        id="part-unknown-field",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "Hi", "name": 5}]},
        "messages[0].name",
        "messages[0].name: must be a string, not a number",
        id="name-number",
    ),
    pytest.param(
        {"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}]},
        "messages[1].tool_calls",
        "messages[1].tool_calls: tool calling is not supported; got [{'id': 'c'}]",
        id="tool-calls",
    ),
    pytest.param(
        {"messages": [USER, {"role": "assistant", "content": "", "refusal": "No."}]},
        "messages[1].refusal",
        'messages[1].refusal: refusals are not supported; got "No."',
        id="refusal",
    ),
    pytest.param(
        {"tools": [{"type": "function"}]},
        "tools",
        "tools: tool calling is not supported; got [{'type': 'function'}]",
        id="tools",
    ),
    pytest.param(
        {"tool_choice": "auto"}, "tool_choice", 'tool_choice: tool calling is not supported; got "auto"', id="choice"
    ),
    pytest.param(
        {"parallel_tool_calls": False},
        "parallel_tool_calls",
        "parallel_tool_calls: tool calling is not supported; got false",
        id="parallel-tool-calls",
    ),
    pytest.param(
        {"response_format": {"type": "json_object"}},
        "response_format",
        "response_format: only {\"type\": \"text\"} is supported; got {'type': 'json_object'}",
        id="json-mode",
    ),
    pytest.param({"logprobs": True}, "logprobs", "logprobs: log probabilities are not supported; got true", id="lp"),
    pytest.param(
        {"top_logprobs": 2}, "top_logprobs", "top_logprobs: log probabilities are not supported; got 2", id="top-lp"
    ),
    pytest.param(
        {"max_tokens": 8, "max_completion_tokens": 8},
        "max_tokens",
        "max_tokens: both max_completion_tokens and max_tokens are given; they are one setting, send one",
        id="both-max-tokens",
    ),
    pytest.param(
        {"max_completion_tokens": 0},
        "max_completion_tokens",
        "max_completion_tokens: must be a whole number from 1 to 512, not 0",
        id="max-completion-tokens-0",
    ),
]


@pytest.mark.parametrize(("fields", "param", "message"), SHARED_REFUSALS)
def test_completions_refuse_with_400_naming_the_field(fields: dict[str, Any], param: str, message: str) -> None:
    check_400(parse_completion_request, completion(**fields), param, message)


@pytest.mark.parametrize(("fields", "param", "message"), SHARED_REFUSALS)
def test_chat_refuses_with_400_naming_the_field(fields: dict[str, Any], param: str, message: str) -> None:
    check_400(parse_chat_request, chat(**fields), param, message)


@pytest.mark.parametrize(("fields", "param", "message"), COMPLETION_REFUSALS)
def test_completion_specific_refusals(fields: dict[str, Any], param: str, message: str) -> None:
    check_400(parse_completion_request, completion(**fields), param, message)


@pytest.mark.parametrize(("fields", "param", "message"), CHAT_REFUSALS)
def test_chat_specific_refusals(fields: dict[str, Any], param: str, message: str) -> None:
    check_400(parse_chat_request, chat(**fields), param, message)


@pytest.mark.parametrize("parse", [parse_completion_request, parse_chat_request])
def test_a_body_that_is_not_an_object_is_400(parse: Parser) -> None:
    check_400(parse, ["Hi"], None, "request body: must be a JSON object, not a list")


@pytest.mark.parametrize(("parse", "document"), [(parse_completion_request, completion), (parse_chat_request, chat)])
def test_another_model_is_404_model_not_found(parse: Parser, document: Callable[..., dict[str, Any]]) -> None:
    error = refused(parse, document(model="gpt-4o"))
    assert (error.status, error.type, error.param, error.code) == (404, "not_found_error", "model", "model_not_found")
    assert error.message == 'model "gpt-4o" is not served here; this server serves "tiny-gpt"'
    assert error_document(error) == {
        "error": {"message": error.message, "type": "not_found_error", "param": "model", "code": "model_not_found"}
    }


def test_long_values_are_shortened_in_messages() -> None:
    error = refused(parse_completion_request, completion(model="m" * 500))
    assert len(error.message) < 120, error.message


def test_completion_defaults_follow_openai() -> None:
    assert parse_completion_request(completion(), MODEL, LIMIT) == CompletionRequest(
        prompt="Once upon",
        sampling=SamplingSettings(max_tokens=16, temperature=1.0, top_p=1.0, seed=None, stop=()),
        stream=False,
        include_usage=False,
    )
    assert parse_completion_request(completion(), MODEL, 8).sampling.max_tokens == 8


def test_chat_defaults_to_256_tokens_or_the_limit() -> None:
    assert parse_chat_request(chat(), MODEL, LIMIT) == ChatRequest(
        messages=(ChatMessage("user", "Hi"),),
        sampling=SamplingSettings(max_tokens=256, temperature=1.0, top_p=1.0, seed=None, stop=()),
        stream=False,
        include_usage=False,
    )
    assert parse_chat_request(chat(), MODEL, 100).sampling.max_tokens == 100


NULLS = {
    "max_tokens": None,
    "temperature": None,
    "top_p": None,
    "seed": None,
    "stop": None,
    "stream": None,
    "stream_options": None,
    "n": None,
    "presence_penalty": None,
    "frequency_penalty": None,
    "logit_bias": None,
    "logprobs": None,
    "user": None,
}
NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "user-1234"}


def test_null_and_neutral_fields_are_the_defaults() -> None:
    expected = parse_completion_request(completion(), MODEL, LIMIT)
    completion_nulls = NULLS | {"best_of": None, "echo": None, "suffix": None}
    assert parse_completion_request(completion(**completion_nulls), MODEL, LIMIT) == expected
    completion_neutral = NEUTRAL | {"best_of": 1, "echo": False, "logprobs": None, "suffix": None}
    assert parse_completion_request(completion(**completion_neutral), MODEL, LIMIT) == expected

    expected_chat = parse_chat_request(chat(), MODEL, LIMIT)
    chat_nulls = NULLS | {"max_completion_tokens": None, "top_logprobs": None, "tools": None, "response_format": None}
    assert parse_chat_request(chat(**chat_nulls), MODEL, LIMIT) == expected_chat
    chat_neutral = NEUTRAL | {
        "logprobs": False,
        "tools": [],
        "tool_choice": "none",
        "functions": [],
        "function_call": "none",
        "response_format": {"type": "text"},
    }
    assert parse_chat_request(chat(**chat_neutral), MODEL, LIMIT) == expected_chat


def test_sampling_settings_are_read_as_given() -> None:
    fields = {"max_tokens": LIMIT, "temperature": 0, "top_p": 0.5, "seed": -(2**63), "stop": "\n"}
    sampling = parse_completion_request(completion(**fields), MODEL, LIMIT).sampling
    assert sampling == SamplingSettings(max_tokens=512, temperature=0.0, top_p=0.5, seed=-(2**63), stop=("\n",))
    assert isinstance(sampling.temperature, float)
    listed = parse_chat_request(chat(stop=["\n\n", "user:"], temperature=2, top_p=1), MODEL, LIMIT).sampling
    assert (listed.stop, listed.temperature, listed.top_p) == (("\n\n", "user:"), 2.0, 1.0)
    assert parse_chat_request(chat(stop=[]), MODEL, LIMIT).sampling.stop == ()
    # max_completion_tokens is chat's newer name for max_tokens; either one sets it.
    assert parse_chat_request(chat(max_completion_tokens=7), MODEL, LIMIT).sampling.max_tokens == 7
    assert parse_chat_request(chat(max_tokens=9, max_completion_tokens=None), MODEL, LIMIT).sampling.max_tokens == 9


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage"),
    [
        ({"stream": True}, True, False),
        ({"stream": True, "stream_options": {}}, True, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
        ({"stream": False}, False, False),
    ],
)
def test_stream_and_usage_flags(fields: dict[str, Any], stream: bool, include_usage: bool) -> None:
    for request in (
        parse_completion_request(completion(**fields), MODEL, LIMIT),
        parse_chat_request(chat(**fields), MODEL, LIMIT),
    ):
        assert (request.stream, request.include_usage) == (stream, include_usage)


def test_a_list_of_one_prompt_is_that_prompt() -> None:
    assert parse_completion_request(completion(prompt=["def f("]), MODEL, LIMIT).prompt == "def f("


def test_chat_messages_are_normalised() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Two"}, {"type": "text", "text": "parts"}], "name": "a"},
        {"role": "assistant", "content": "Ok.", "refusal": None, "tool_calls": None, "function_call": None},
        {"role": "system", "content": [], "audio": None},
        {"role": "user", "content": ""},
    ]
    assert parse_chat_request(chat(messages=messages), MODEL, LIMIT).messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Two\nparts"),
        ChatMessage("assistant", "Ok."),
        ChatMessage("system", ""),
        ChatMessage("user", ""),
    )


def test_an_answer_sent_back_as_history_is_accepted() -> None:
    answer = chat_response("chatcmpl-1", CREATED, MODEL, "Hello", "stop", 3, 1)["choices"][0]["message"]
    request = parse_chat_request(chat(messages=[USER, answer, USER]), MODEL, LIMIT)
    assert request.messages[1] == ChatMessage("assistant", "Hello")


def test_default_chat_prompt_lists_the_turns_and_leaves_the_assistant_to_answer() -> None:
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello"))
    assert default_chat_prompt(messages) == "system: Be brief.\nuser: Hi\nassistant: Hello\nassistant:"
    assert default_chat_prompt([ChatMessage("user", "Hi")]) == "user: Hi\nassistant:"


def test_parse_body_refuses_what_is_not_json_in_openai_shape() -> None:
    assert parse_body(b'{"model": "m"}') == {"model": "m"}
    with pytest.raises(OpenAIError) as caught:
        parse_body(b'{"model": ')
    assert caught.value.status == 400 and caught.value.type == "invalid_request_error"
    assert caught.value.message == "request body is not valid JSON: Expecting value at line 1 column 11"
    assert error_document(caught.value)["error"]["param"] is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_error_document_for_names_openai_types(status: int, error_type: str) -> None:
    assert error_document_for(status, "why") == {
        "error": {"message": "why", "type": error_type, "param": None, "code": None}
    }


def test_request_ids_carry_openai_prefixes() -> None:
    assert new_request_id("completion").startswith("cmpl-")
    assert new_request_id("chat").startswith("chatcmpl-")
    assert new_request_id("chat") != new_request_id("chat")


def test_sse_framing() -> None:
    assert sse_event({"text": "a\nb"}) == b'data: {"text":"a\\nb"}\n\n'
    # A lone surrogate (no UTF-8 encoder takes it) is escaped rather than failing the stream.
    assert sse_event({"text": "\ud800é"}) == b'data: {"text":"\\ud800\\u00e9"}\n\n'
    assert SSE_DONE == b"data: [DONE]\n\n" and SSE_MEDIA_TYPE == "text/event-stream"


def test_the_module_imports_no_web_framework_torch_or_ray() -> None:
    probe = (
        "import json, sys; import bigmodel.runtime.serving.openai_protocol; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT / "operator")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert not loaded & {"torch", "ray", "fastapi", "starlette", "aiohttp", "pydantic", "openai", "httpx", "httpx2"}


def extra_fields(value: Any, path: str = "") -> list[str]:
    """Fields a document carries that the client's type does not define (pydantic keeps them as extras)."""
    if isinstance(value, BaseModel):
        found = [f"{path}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += extra_fields(getattr(value, name), f"{path}.{name}")
        return found
    if isinstance(value, list):
        return [field for index, item in enumerate(value) for field in extra_fields(item, f"{path}[{index}]")]
    return []


def parsed(model_type: type[BaseModel], document: dict[str, Any]) -> Any:
    """The document as the official client's own type reads it, validated (the client itself reads leniently)."""
    json.dumps(document)
    model = model_type.model_validate(document)
    assert extra_fields(model) == []
    assert model.model_dump(mode="json", exclude_unset=True) == document
    return model


def test_completion_response_is_an_openai_completion() -> None:
    response = parsed(Completion, completion_response("cmpl-1", CREATED, MODEL, "Hello", "length", 3, 5))
    assert (response.id, response.object, response.created, response.model) == (
        "cmpl-1",
        "text_completion",
        CREATED,
        MODEL,
    )
    assert (response.choices[0].text, response.choices[0].finish_reason) == ("Hello", "length")
    assert response.usage.model_dump() == usage(3, 5) | {
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert usage(3, 5) == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_completion_chunks_are_openai_completions() -> None:
    last = parsed(Completion, completion_chunk("cmpl-1", CREATED, MODEL, "", "stop"))
    assert last.choices[0].finish_reason == "stop" and last.usage is None
    # Completion types finish_reason as never null, yet OpenAI streams null until the last chunk; the client reads
    # chunks leniently, and test_the_client_streams_a_completion shows it takes them.
    assert completion_chunk("cmpl-1", CREATED, MODEL, "He", None)["choices"][0]["finish_reason"] is None
    final = parsed(Completion, usage_chunk("completion", "cmpl-1", CREATED, MODEL, 3, 5))
    assert final.choices == [] and final.usage.total_tokens == 8


def test_chat_response_is_an_openai_chat_completion() -> None:
    response = parsed(ChatCompletion, chat_response("chatcmpl-1", CREATED, MODEL, "Hello", "stop", 3, 5))
    assert response.object == "chat.completion"
    message = response.choices[0].message
    assert (message.role, message.content, response.choices[0].finish_reason) == ("assistant", "Hello", "stop")
    assert response.usage.total_tokens == 8


def test_chat_chunks_are_openai_chat_completion_chunks() -> None:
    first = parsed(ChatCompletionChunk, chat_chunk("chatcmpl-1", CREATED, MODEL, "", None, first=True))
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    middle = parsed(ChatCompletionChunk, chat_chunk("chatcmpl-1", CREATED, MODEL, "Hel", None, first=False))
    assert (middle.choices[0].delta.role, middle.choices[0].delta.content) == (None, "Hel")
    last_document = chat_chunk("chatcmpl-1", CREATED, MODEL, None, "length", first=False)
    assert last_document["choices"][0]["delta"] == {}
    assert parsed(ChatCompletionChunk, last_document).choices[0].finish_reason == "length"
    final = parsed(ChatCompletionChunk, usage_chunk("chat", "chatcmpl-1", CREATED, MODEL, 3, 5))
    assert final.choices == [] and final.usage.completion_tokens == 5


def test_model_card_and_list_are_openai_models() -> None:
    card = parsed(Model, model_card(MODEL, CREATED))
    assert (card.id, card.object, card.created, card.owned_by) == (MODEL, "model", CREATED, "bigmodel")
    listing = model_list(MODEL, CREATED)
    assert listing["object"] == "list"
    assert [parsed(Model, item).id for item in listing["data"]] == [MODEL]


class FakeServer:
    """The serving app reduced to this module: each request through its parser, each answer from the builders, the
    engine replaced by PIECES. Prompt and completion token counts are lengths, as for the byte-level GPT."""

    def __init__(self) -> None:
        self.received: list[CompletionRequest | ChatRequest] = []

    def __call__(self, request: Any) -> Any:
        try:
            return self._answer(request.url.path, request)
        except OpenAIError as error:
            return httpx.Response(error.status, json=error_document(error))

    def _answer(self, path: str, request: Any) -> Any:
        if path == "/v1/models":
            return httpx.Response(200, json=model_list(MODEL, CREATED))
        if path == f"/v1/models/{MODEL}":
            return httpx.Response(200, json=model_card(MODEL, CREATED))
        body = parse_body(request.content)
        kind = "chat" if path == "/v1/chat/completions" else "completion"
        parsed_request: CompletionRequest | ChatRequest
        if kind == "chat":
            parsed_request = parse_chat_request(body, MODEL, LIMIT)
            prompt = default_chat_prompt(parsed_request.messages)
        else:
            parsed_request = parse_completion_request(body, MODEL, LIMIT)
            prompt = parsed_request.prompt
        self.received.append(parsed_request)
        request_id, text = new_request_id(kind), "".join(PIECES)
        if not parsed_request.stream:
            build = chat_response if kind == "chat" else completion_response
            return httpx.Response(200, json=build(request_id, CREATED, MODEL, text, "stop", len(prompt), len(text)))
        if kind == "chat":
            chunks = [chat_chunk(request_id, CREATED, MODEL, "", None, first=True)]
            chunks += [chat_chunk(request_id, CREATED, MODEL, piece, None, first=False) for piece in PIECES]
            chunks.append(chat_chunk(request_id, CREATED, MODEL, None, "stop", first=False))
        else:
            chunks = [completion_chunk(request_id, CREATED, MODEL, piece, None) for piece in PIECES]
            chunks.append(completion_chunk(request_id, CREATED, MODEL, "", "stop"))
        if parsed_request.include_usage:
            chunks.append(usage_chunk(kind, request_id, CREATED, MODEL, len(prompt), len(text)))
        return stream_response([sse_event(chunk) for chunk in chunks] + [SSE_DONE])


def stream_response(events: Sequence[bytes]) -> Any:
    return httpx.Response(200, headers={"content-type": SSE_MEDIA_TYPE}, content=b"".join(events))


def client_of(handler: Callable[[Any], Any]) -> openai.OpenAI:
    transport = httpx.MockTransport(handler)
    return openai.OpenAI(
        api_key="unused",
        base_url="http://serving.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer) -> openai.OpenAI:
    return client_of(server)


def test_the_client_reads_a_completion(server: FakeServer, client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=12, temperature=0, seed=7, stop=["\n"], user="u-1"
    )
    assert (response.choices[0].text, response.choices[0].finish_reason) == ("Hello, world", "stop")
    assert response.usage is not None and response.usage.total_tokens == len("Once upon") + len("Hello, world")
    assert server.received == [
        CompletionRequest("Once upon", SamplingSettings(12, 0.0, 1.0, 7, ("\n",)), stream=False, include_usage=False)
    ]


def test_the_client_streams_a_completion(server: FakeServer, client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model=MODEL, prompt="Once", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "Hello, world"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices] == [None, None, None, "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len("Hello, world")
    assert server.received[0].include_usage


def test_the_client_reads_a_chat_completion(server: FakeServer, client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=20,
        top_p=0.9,
    )
    message = response.choices[0].message
    assert (message.role, message.content, response.choices[0].finish_reason) == ("assistant", "Hello, world", "stop")
    request = server.received[0]
    assert isinstance(request, ChatRequest)
    assert request.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))
    assert (request.sampling.max_tokens, request.sampling.top_p) == (20, 0.9)


def test_the_client_streams_a_chat_completion(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[USER], stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(delta.content or "" for delta in deltas) == "Hello, world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len("user: Hi\nassistant:")


def test_the_clients_stream_helper_assembles_the_chat_answer(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=MODEL, messages=[USER]) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello, world"
    assert final.choices[0].message.role == "assistant" and final.choices[0].finish_reason == "stop"


def test_the_client_lists_and_retrieves_the_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "bigmodel"


def test_the_client_raises_not_found_for_another_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4o", prompt="Hi")
    message = 'model "gpt-4o" is not served here; this server serves "tiny-gpt"'
    assert caught.value.message == f"Error code: 404 - {message}"
    assert (caught.value.code, caught.value.param, caught.value.type) == ("model_not_found", "model", "not_found_error")


def test_the_client_raises_bad_request_with_the_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[USER], n=2)
    assert caught.value.message == (
        "Error code: 400 - n: only 1 is supported: this server samples one sequence per request; got 2"
    )
    assert (caught.value.param, caught.value.type) == ("n", "invalid_request_error")


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (401, openai.AuthenticationError),
        (413, openai.APIStatusError),
        (429, openai.RateLimitError),
        (503, openai.InternalServerError),
        (504, openai.InternalServerError),
    ],
)
def test_the_client_raises_for_errors_made_elsewhere(status: int, exception: type[openai.APIStatusError]) -> None:
    client = client_of(lambda request: httpx.Response(status, json=error_document_for(status, "try later")))
    with pytest.raises(exception) as caught:
        client.completions.create(model=MODEL, prompt="Hi")
    assert caught.value.status_code == status and caught.value.message == f"Error code: {status} - try later"


def test_an_error_inside_a_stream_makes_the_client_raise() -> None:
    events = [
        sse_event(chat_chunk("chatcmpl-1", CREATED, MODEL, "", None, first=True)),
        sse_event(error_document_for(500, "generation failed: the engine stopped")),
        SSE_DONE,
    ]
    client = client_of(lambda request: stream_response(events))
    stream = client.chat.completions.create(model=MODEL, messages=[USER], stream=True)
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.message == "generation failed: the engine stopped"
