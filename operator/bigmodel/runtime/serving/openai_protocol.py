"""OpenAI's completions, chat completions and models formats for a text-generation server, without any web framework.

The counterpart of protocol.py (KServe) for /v1/completions, /v1/chat/completions and /v1/models. A request becomes a
frozen dataclass the engine can trust; anything else becomes an OpenAIError whose error_document is OpenAI's error
body, with the field path in `param`, so the official clients raise their usual exception carrying our one-line message.
The response builders return plain dicts shaped as OpenAI's API reference shows them, and sse_event frames them for
streaming.

One prompt, one sampled sequence, text in and text out: a field OpenAI defines for anything more (several choices, log
probabilities, penalties, tools, structured output) is accepted only at the value that asks for nothing (n=1,
echo=false, ...), so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bigmodel.runtime.serving.protocol import BAD_REQUEST, NOT_FOUND, ProtocolError, parse_json, shown, type_name

SSE_MEDIA_TYPE = "text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"

# OpenAI's default for the completions endpoint.
DEFAULT_COMPLETION_MAX_TOKENS = 16
# OpenAI's chat endpoint writes until the model stops. A model trained here (the byte-level GPT) may never emit an end
# of text and would run to the server's limit on every call; 256 keeps a chat call that names no max_tokens quick and
# still long enough to read as an answer. A client that wants more asks for it, up to the limit.
DEFAULT_CHAT_MAX_TOKENS = 256
MAX_STOP_SEQUENCES = 4
SEED_RANGE = (-(2**63), 2**63 - 1)
# developer is OpenAI's newer name for system (for its reasoning models); both are instructions to the model.
CHAT_ROLES = ("system", "developer", "user", "assistant")

Kind = Literal["completion", "chat"]
FinishReason = Literal["stop", "length"]

_ID_PREFIXES: dict[Kind, str] = {"completion": "cmpl-", "chat": "chatcmpl-"}
_CHUNK_OBJECTS: dict[Kind, str] = {"completion": "text_completion", "chat": "chat.completion.chunk"}

# OpenAI's error type names. The official clients choose their exception by the status alone, so the type only informs
# whoever reads the body; OpenAI calls every failure on its own side a server_error, an overloaded engine included.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's type for a status: any other 4xx (413 a body too large, 422) is the request's to fix."""
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


class OpenAIError(Exception):
    """A request the server refuses: the HTTP status, a one-line message, and the field at fault (`param`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type(status)
        self.param = param
        self.code = code


def _invalid(param: str, reason: str) -> OpenAIError:
    return OpenAIError(BAD_REQUEST, f"{param}: {reason}", param)


def error_document(error: OpenAIError) -> dict[str, Any]:
    """OpenAI's error body. Sent as an SSE event inside a stream, it makes the official clients raise too."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_document_for(status: int, message: str) -> dict[str, Any]:
    """The error body for a refusal made outside the parsers: authentication, a body too large, a full queue, a timeout."""
    return error_document(OpenAIError(status, message))


def parse_body(body: bytes) -> Any:
    """protocol.parse_json, refusing a body that is not JSON in OpenAI's error shape."""
    try:
        return parse_json(body)
    except ProtocolError as error:
        raise OpenAIError(error.status, error.message) from error


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    # The engine stops at the first of these and leaves it out of the text, finish_reason "stop", as OpenAI does.
    stop: tuple[str, ...]


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str
    sampling: SamplingSettings
    stream: bool
    # A final chunk with the token counts before [DONE] (stream_options.include_usage).
    include_usage: bool


@dataclass(frozen=True)
class ChatMessage:
    # system, user or assistant: a developer message arrives here as system, the role every chat template knows.
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    sampling: SamplingSettings
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class _Neutral:
    """A field OpenAI defines that this server does not implement: accepted when null or one of `values`."""

    values: tuple[Any, ...]
    reason: str

    def check(self, value: Any, param: str) -> None:
        # 0 == False in Python, but echo=0 or n=true is a client's mistake, not the neutral value.
        if value is None or any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values):
            return
        raise _invalid(param, f"{self.reason}; got {shown(value)}")


_ONE_CHOICE = _Neutral((1,), "only 1 is supported: this server samples one sequence per request")
_NO_PENALTY = _Neutral((0,), "only 0 is supported: this server applies no penalties")
_NO_TOOLS = _Neutral(([],), "tool calling is not supported")
_NO_TOOL_CHOICE = _Neutral(("none",), "tool calling is not supported")
_NO_TOOL_CALL = _Neutral((), "tool calling is not supported")
_SHARED_NEUTRAL = {
    "n": _ONE_CHOICE,
    "presence_penalty": _NO_PENALTY,
    "frequency_penalty": _NO_PENALTY,
    "logit_bias": _Neutral(({},), "biasing tokens is not supported"),
}
_COMPLETION_NEUTRAL = _SHARED_NEUTRAL | {
    "best_of": _ONE_CHOICE,
    "echo": _Neutral((False,), "echoing the prompt is not supported"),
    "logprobs": _Neutral((), "log probabilities are not supported"),
    "suffix": _Neutral((), "a suffix (inserting text) is not supported"),
}
_CHAT_NEUTRAL = _SHARED_NEUTRAL | {
    "logprobs": _Neutral((False,), "log probabilities are not supported"),
    "top_logprobs": _Neutral((), "log probabilities are not supported"),
    "tools": _NO_TOOLS,
    "tool_choice": _NO_TOOL_CHOICE,
    "parallel_tool_calls": _NO_TOOL_CALL,
    "functions": _NO_TOOLS,
    "function_call": _NO_TOOL_CHOICE,
    "response_format": _Neutral(({"type": "text"},), 'only {"type": "text"} is supported'),
}
# Fields an assistant message carries when a client sends a response's message back as history; null there.
_MESSAGE_NEUTRAL = {
    "tool_calls": _NO_TOOLS,
    "function_call": _NO_TOOL_CALL,
    "refusal": _Neutral((), "refusals are not supported"),
    "audio": _Neutral((), "audio is not supported"),
}
_MESSAGE_FIELDS = ("role", "content", "name")
# user identifies the end user to OpenAI's abuse monitoring; nothing here monitors, so it is accepted unread.
_COMMON_FIELDS = ("temperature", "top_p", "seed", "stop", "stream", "stream_options", "user")
_COMPLETION_FIELDS = ("model", "prompt", "max_tokens", *_COMMON_FIELDS, *_COMPLETION_NEUTRAL)
_CHAT_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", *_COMMON_FIELDS, *_CHAT_NEUTRAL)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _object(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise OpenAIError(BAD_REQUEST, f"request body: must be a JSON object, not {type_name(document)}")
    return document


def _known_fields(body: Mapping[str, Any], known: Sequence[str]) -> None:
    # A misspelt field silently ignored would answer a different question than the client asked.
    for key in body:
        if key not in known:
            # OpenAI's own words; quoted, so that a key with a line break still makes a one-line message.
            raise OpenAIError(BAD_REQUEST, f"Unrecognized request argument supplied: {shown(key)}", key)


def _check_neutral(body: Mapping[str, Any], neutral: Mapping[str, _Neutral], where: str = "") -> None:
    for name, rule in neutral.items():
        rule.check(body.get(name), f"{where}{name}")


def _check_model(body: Mapping[str, Any], served_model: str) -> None:
    model = body.get("model")
    if model is None:
        raise _invalid("model", f"required field is missing; this server serves {shown(served_model)}")
    if not isinstance(model, str):
        raise _invalid("model", f"must be a string, not {type_name(model)}")
    if model != served_model:
        raise OpenAIError(
            NOT_FOUND,
            f"model {shown(model)} is not served here; this server serves {shown(served_model)}",
            "model",
            "model_not_found",
        )


def _max_tokens(body: Mapping[str, Any], names: Sequence[str], default: int, limit: int) -> int:
    given = [name for name in names if body.get(name) is not None]
    if len(given) > 1:
        raise _invalid(given[1], f"both {given[0]} and {given[1]} are given; they are one setting, send one")
    if not given:
        return min(default, limit)
    value = body[given[0]]
    if not (_is_whole(value) and 1 <= value <= limit):
        raise _invalid(given[0], f"must be a whole number from 1 to {limit}, not {shown(value)}")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        sequences = [("stop", value)]
    elif isinstance(value, list):
        if len(value) > MAX_STOP_SEQUENCES:
            raise _invalid("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(value)}")
        sequences = [(f"stop[{index}]", sequence) for index, sequence in enumerate(value)]
    else:
        raise _invalid("stop", f"must be a string or a list of strings, not {type_name(value)}")
    for param, sequence in sequences:
        # An empty stop sequence would match before the first token and every answer would be empty.
        if not isinstance(sequence, str) or not sequence:
            raise _invalid(param, f"must be a non-empty string, not {shown(sequence)}")
    return tuple(sequence for _, sequence in sequences)


def _sampling(
    body: Mapping[str, Any], max_token_names: Sequence[str], default_max_tokens: int, max_tokens_limit: int
) -> SamplingSettings:
    # Null means "the default" for every optional field, as at OpenAI: some clients send every field they know.
    # A NaN fails every comparison, so the range checks refuse it too.
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    elif not (_is_number(temperature) and 0 <= temperature <= 2):
        raise _invalid("temperature", f"must be a number from 0 to 2, not {shown(temperature)}")
    top_p = body.get("top_p")
    if top_p is None:
        top_p = 1.0
    elif not (_is_number(top_p) and 0 < top_p <= 1):
        raise _invalid("top_p", f"must be a number above 0 and at most 1, not {shown(top_p)}")
    seed = body.get("seed")
    if seed is not None and not (_is_whole(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise _invalid("seed", f"must be a whole number that fits in 64 bits, not {shown(seed)}")
    return SamplingSettings(
        max_tokens=_max_tokens(body, max_token_names, default_max_tokens, max_tokens_limit),
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        stop=_stop(body.get("stop")),
    )


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """Whether to stream, and whether to end the stream with a usage chunk."""
    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise _invalid("stream", f"must be true or false, not {shown(stream)}")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise _invalid("stream_options", "only allowed when stream is true")
    if not isinstance(options, dict):
        raise _invalid("stream_options", f"must be a JSON object, not {type_name(options)}")
    for key in options:
        if key != "include_usage":
            raise OpenAIError(
                BAD_REQUEST,
                f"stream_options: unknown field {shown(key)}; expected include_usage",
                f"stream_options.{key}",
            )
    include_usage = options.get("include_usage")
    if include_usage is None:
        return stream, False
    if not isinstance(include_usage, bool):
        raise _invalid("stream_options.include_usage", f"must be true or false, not {shown(include_usage)}")
    return stream, include_usage


def _prompt(value: Any) -> str:
    if value is None:
        raise _invalid("prompt", "required field is missing")
    param = "prompt"
    if isinstance(value, list):
        if value and (_is_whole(value[0]) or isinstance(value[0], list)):
            raise _invalid("prompt", "token-id prompts are not supported; send the text")
        if len(value) > 1 and all(isinstance(item, str) for item in value):
            raise _invalid("prompt", f"{len(value)} prompts in one request are not supported; send one per request")
        if len(value) == 1:
            param, value = "prompt[0]", value[0]
    if not isinstance(value, str):
        raise _invalid(param, f"must be a string or a list of one string, not {shown(value)}")
    if not value:
        raise _invalid(param, "must not be empty")
    return value


def parse_completion_request(document: Any, served_model: str, max_tokens_limit: int) -> CompletionRequest:
    """A /v1/completions body; max_tokens defaults to OpenAI's 16 (or the limit, if lower)."""
    body = _object(document)
    _check_model(body, served_model)
    _known_fields(body, _COMPLETION_FIELDS)
    _check_neutral(body, _COMPLETION_NEUTRAL)
    prompt = _prompt(body.get("prompt"))
    sampling = _sampling(body, ("max_tokens",), DEFAULT_COMPLETION_MAX_TOKENS, max_tokens_limit)
    stream, include_usage = _stream(body)
    return CompletionRequest(prompt, sampling, stream, include_usage)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _invalid(where, f"must be a string or a list of text parts, not {type_name(value)}")
    texts: list[str] = []
    for index, part in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise _invalid(at, f'must be an object such as {{"type": "text", "text": ...}}, not {type_name(part)}')
        if part.get("type") != "text":
            raise _invalid(f"{at}.type", f"only text parts are supported; got {shown(part.get('type'))}")
        for key in part:
            if key not in ("type", "text"):
                raise OpenAIError(BAD_REQUEST, f"{at}: unknown field {shown(key)}; expected type, text", f"{at}.{key}")
        if not isinstance(part.get("text"), str):
            raise _invalid(f"{at}.text", f"must be a string, not {type_name(part.get('text'))}")
        texts.append(part["text"])
    # Parts are separate passages; vLLM joins them with a line break too.
    return "\n".join(texts)


def _message(value: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(value, dict):
        raise _invalid(where, f"must be an object with a role and content, not {type_name(value)}")
    for key in value:
        if key not in _MESSAGE_FIELDS and key not in _MESSAGE_NEUTRAL:
            raise OpenAIError(
                BAD_REQUEST,
                f"{where}: unknown field {shown(key)}; expected {', '.join(_MESSAGE_FIELDS)}",
                f"{where}.{key}",
            )
    _check_neutral(value, _MESSAGE_NEUTRAL, f"{where}.")
    role = value.get("role")
    if role is None:
        raise _invalid(f"{where}.role", "required field is missing")
    if role not in CHAT_ROLES:
        raise _invalid(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)}; got {shown(role)}")
    # name tells apart participants sharing a role; neither the default prompt nor this server's models use it.
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid(f"{where}.name", f"must be a string, not {type_name(name)}")
    if value.get("content") is None:
        raise _invalid(f"{where}.content", "required field is missing")
    return ChatMessage("system" if role == "developer" else role, _content(value["content"], f"{where}.content"))


def parse_chat_request(document: Any, served_model: str, max_tokens_limit: int) -> ChatRequest:
    """A /v1/chat/completions body; max_tokens (or max_completion_tokens) defaults to 256, or the limit if lower."""
    body = _object(document)
    _check_model(body, served_model)
    _known_fields(body, _CHAT_FIELDS)
    _check_neutral(body, _CHAT_NEUTRAL)
    messages = body.get("messages")
    if messages is None:
        raise _invalid("messages", "required field is missing")
    if not isinstance(messages, list):
        raise _invalid("messages", f"must be a list of messages, not {type_name(messages)}")
    if not messages:
        raise _invalid("messages", "must hold at least one message")
    parsed = tuple(_message(message, index) for index, message in enumerate(messages))
    sampling = _sampling(body, ("max_completion_tokens", "max_tokens"), DEFAULT_CHAT_MAX_TOKENS, max_tokens_limit)
    stream, include_usage = _stream(body)
    return ChatRequest(parsed, sampling, stream, include_usage)


def default_chat_prompt(messages: Sequence[ChatMessage]) -> str:
    """The prompt for a model without a chat template: the byte-level built-in GPT and tokenizers that have none.

    One line per message, "role: content", then "assistant:" for the model to continue, e.g.
    "system: Be brief.\\nuser: Hi\\nassistant:". No space follows the last colon: most tokenizers start a word with its
    space, so the model writes " Hello" as one token. Content is not escaped; a line break inside it stays one.
    """
    return "\n".join([*(f"{message.role}: {message.content}" for message in messages), "assistant:"])


def new_request_id(kind: Kind) -> str:
    return f"{_ID_PREFIXES[kind]}{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _document(
    request_id: str, obj: str, created: int, model: str, choices: list[dict[str, Any]], counts: tuple[int, int] | None
) -> dict[str, Any]:
    """The envelope every answer and chunk shares; usage only where there are final counts."""
    document = {"id": request_id, "object": obj, "created": created, "model": model, "choices": choices}
    if counts is not None:
        document["usage"] = usage(*counts)
    return document


def _text_choice(text: str, finish_reason: FinishReason | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def completion_response(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    choices = [_text_choice(text, finish_reason)]
    return _document(request_id, "text_completion", created, model, choices, (prompt_tokens, completion_tokens))


def completion_chunk(
    request_id: str, created: int, model: str, text: str, finish_reason: FinishReason | None
) -> dict[str, Any]:
    """One streamed piece of a completion; finish_reason stays null until the last piece, as OpenAI streams it."""
    return _document(request_id, "text_completion", created, model, [_text_choice(text, finish_reason)], None)


def chat_response(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    choice = {
        "index": 0,
        # refusal is required (null) in the reference; a client sending this message back as history sends it
        # too, and parse_chat_request accepts it.
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    return _document(request_id, "chat.completion", created, model, [choice], (prompt_tokens, completion_tokens))


def chat_chunk(
    request_id: str,
    created: int,
    model: str,
    delta_text: str | None,
    finish_reason: FinishReason | None,
    first: bool,
) -> dict[str, Any]:
    """One streamed piece of a chat answer.

    The first chunk names the role (OpenAI sends it with content ""), the last has a finish_reason and, like OpenAI's,
    usually no text: pass None for delta_text to leave content out of the delta.
    """
    delta: dict[str, str] = {"role": "assistant"} if first else {}
    if delta_text is not None:
        delta["content"] = delta_text
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _document(request_id, "chat.completion.chunk", created, model, [choice], None)


def usage_chunk(
    kind: Kind, request_id: str, created: int, model: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The last chunk before [DONE] when the request set stream_options.include_usage: no choices, the token counts.

    OpenAI also puts "usage": null on every earlier chunk of such a stream; the clients read a missing usage the same.
    """
    return _document(request_id, _CHUNK_OBJECTS[kind], created, model, [], (prompt_tokens, completion_tokens))


def model_card(name: str, created: int, owned_by: str = "bigmodel") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(name: str, created: int) -> dict[str, Any]:
    """/v1/models: the one model this server serves."""
    return {"object": "list", "data": [model_card(name, created)]}


def sse_event(document: Mapping[str, Any]) -> bytes:
    """A server-sent event carrying one JSON document; end a stream with SSE_DONE.

    JSON escapes every line break, so the document stays on its one data line; ASCII escapes keep a lone surrogate
    (which no UTF-8 encoder takes) from failing the whole stream.
    """
    return b"data: " + json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n\n"
