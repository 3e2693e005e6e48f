"""The OpenAI-compatible endpoints of a generative model: requests parsed by openai_protocol, answered by the
replica's TextGenerator, whole or as server-sent events. No web framework: app.py routes to these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from bigmodel.runtime.generation.engine import RequestRefused
from bigmodel.runtime.generation.sampling import Sampling
from bigmodel.runtime.generation.tokenizers import ConversationRefused
from bigmodel.runtime.serving.guard import GATEWAY_TIMEOUT, no_answer_within
from bigmodel.runtime.serving.openai_protocol import (
    SSE_DONE,
    ChatRequest,
    CompletionRequest,
    Kind,
    OpenAIError,
    SamplingSettings,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    default_chat_prompt,
    error_document_for,
    new_request_id,
    parse_body,
    parse_chat_request,
    parse_completion_request,
    sse_event,
    usage_chunk,
)
from bigmodel.runtime.serving.protocol import BAD_REQUEST
from bigmodel.runtime.serving.text_generation import GenerationFailed, Piece, Prepared, TextGenerator, TextRequest

log = logging.getLogger(__name__)
INTERNAL_ERROR = 500


@dataclass(frozen=True)
class Answer:
    """What an endpoint answers: a JSON document, or (stream) the bytes of server-sent events."""

    document: dict[str, Any] | None = None
    events: AsyncIterator[bytes] | None = None


class OpenAIEndpoints:
    def __init__(self, generator: TextGenerator, model_name: str, created: int, timeout_s: float) -> None:
        self.generator = generator
        self.model_name = model_name
        self.created = created
        self.timeout_s = timeout_s
        # The most new tokens a request may ask for: what one replica's cache could ever hold for it.
        self.max_tokens_limit = generator.loop.engine.max_cached_tokens

    async def completions(self, body: bytes) -> Answer:
        request = parse_completion_request(parse_body(body), self.model_name, self.max_tokens_limit)
        prepared = self._prepare(request.prompt, request.sampling)
        return await self._answer("completion", request, prepared)

    async def chat(self, body: bytes) -> Answer:
        request = parse_chat_request(parse_body(body), self.model_name, self.max_tokens_limit)
        messages = [{"role": message.role, "content": message.content} for message in request.messages]
        try:
            prompt = self.generator.chat_prompt(messages, default_chat_prompt(request.messages))
        except ConversationRefused as error:
            raise OpenAIError(BAD_REQUEST, str(error), "messages") from error
        return await self._answer("chat", request, self._prepare(prompt, request.sampling))

    def _prepare(self, prompt: str, settings: SamplingSettings) -> Prepared:
        sampling = Sampling(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
        try:
            return self.generator.prepare(TextRequest(prompt, settings.max_tokens, sampling, settings.stop))
        except RequestRefused as error:
            raise OpenAIError(BAD_REQUEST, str(error), "max_tokens", "context_length_exceeded") from error

    async def _answer(self, kind: Kind, request: CompletionRequest | ChatRequest, prepared: Prepared) -> Answer:
        request_id = new_request_id(kind)
        if request.stream:
            return Answer(events=self._events(kind, request_id, prepared, request.include_usage))
        try:
            piece = await asyncio.wait_for(self.generator.complete(prepared), self.timeout_s)
        except TimeoutError:
            raise OpenAIError(GATEWAY_TIMEOUT, no_answer_within(self.timeout_s)) from None
        except GenerationFailed as error:
            raise OpenAIError(INTERNAL_ERROR, str(error)) from error
        build = completion_response if kind == "completion" else chat_response
        return Answer(
            document=build(
                request_id,
                self.created,
                self.model_name,
                piece.text,
                piece.finish,  # the engine's reasons are OpenAI's: length, stop
                piece.prompt_tokens,
                piece.completion_tokens,
            )
        )

    async def _events(
        self, kind: Kind, request_id: str, prepared: Prepared, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """One event per piece of text as it comes, then (when asked) the usage, then [DONE]. A client that leaves
        closes this generator, which cancels the generation and frees its place in the batch."""
        last: Piece | None = None
        if kind == "chat":
            yield sse_event(chat_chunk(request_id, self.created, self.model_name, "", None, first=True))
        try:
            async for piece in self.generator.stream(prepared):
                last = piece
                if piece.text or piece.finish is not None:
                    yield sse_event(self._chunk(kind, request_id, piece))
        except GenerationFailed as error:
            # The status line has gone out: the error travels as an event, which OpenAI's clients raise.
            log.warning("generation %s failed: %s", request_id, error)
            yield sse_event(error_document_for(INTERNAL_ERROR, str(error)))
            return
        if include_usage and last is not None:
            yield sse_event(
                usage_chunk(kind, request_id, self.created, self.model_name, last.prompt_tokens, last.completion_tokens)
            )
        yield SSE_DONE

    def _chunk(self, kind: Kind, request_id: str, piece: Piece) -> dict[str, Any]:
        if kind == "completion":
            return completion_chunk(request_id, self.created, self.model_name, piece.text, piece.finish)
        return chat_chunk(request_id, self.created, self.model_name, piece.text or None, piece.finish, first=False)
