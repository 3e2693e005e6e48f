"""A generative model as a server uses it: text in, text out (whole or streamed), on one continuous-batching engine.

Both the KServe endpoints (predictor.py) and the OpenAI-compatible ones (app.py) generate through here, so every
request of a replica shares the one batch, whichever protocol it came by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from bigmodel.runtime.generation.engine import ERROR, STOP, Engine, GenerationRequest, Load
from bigmodel.runtime.generation.loop import EngineLoop
from bigmodel.runtime.generation.models import CausalModel
from bigmodel.runtime.generation.sampling import Sampling
from bigmodel.runtime.generation.text import TextStream
from bigmodel.runtime.generation.tokenizers import Tokenizer


class GenerationFailed(RuntimeError):
    """The model failed while generating (str() says how); the request cannot be answered."""


@dataclass(frozen=True)
class Piece:
    """Text of a generation as it comes; the last piece has finish set and the token counts final."""

    text: str
    finish: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    max_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    request: TextRequest
    generation: GenerationRequest


class TextGenerator:
    def __init__(self, model: CausalModel, tokenizer: Tokenizer, *, max_sequences: int, max_cached_tokens: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.loop = EngineLoop(Engine(model, max_sequences=max_sequences, max_cached_tokens=max_cached_tokens))

    def load(self) -> Load:
        """What the replica's engine has yet to do, for the autoscaler (app.py reports it to Serve)."""
        return self.loop.engine.load()

    def chat_prompt(self, messages: Sequence[Mapping[str, str]], fallback: str) -> str:
        """A conversation as the model's prompt: its own chat template, else fallback (a plain transcript)."""
        return self.tokenizer.chat_prompt(messages) or fallback

    def prepare(self, request: TextRequest) -> Prepared:
        """The request's tokens, checked against the engine's bounds: raises RequestRefused before any answer starts."""
        generation = GenerationRequest(
            tuple(self.tokenizer.encode(request.prompt)), request.max_tokens, request.sampling
        )
        self.loop.engine.check(generation)
        return Prepared(request, generation)

    async def stream(self, prepared: Prepared) -> AsyncIterator[Piece]:
        """The generated text in pieces as tokens come; stops at a stop string, which is left out of the text."""
        text = TextStream(self.tokenizer, prepared.request.stop)
        prompt_tokens = len(prepared.generation.prompt)
        async for output in self.loop.stream(prepared.generation):
            if output.finish == ERROR:
                raise GenerationFailed(output.error or "the model failed")
            piece = text.add(output.tokens)
            if text.stopped:
                # Leaving the stream here cancels the rest of the generation.
                yield Piece(piece, STOP, prompt_tokens, len(text.tokens))
                return
            if output.finish is not None:
                piece += text.finish()
            yield Piece(piece, output.finish, prompt_tokens, len(text.tokens))

    async def complete(self, prepared: Prepared) -> Piece:
        """The whole generated text at once."""
        pieces = [piece async for piece in self.stream(prepared)]
        last = pieces[-1]
        return Piece("".join(piece.text for piece in pieces), last.finish, last.prompt_tokens, last.completion_tokens)

    def complete_blocking(self, prepared: Sequence[Prepared], timeout_s: float | None = None) -> list[str]:
        """Whole texts of several requests without stop strings, generated together, from a thread with no event loop."""
        tokens = self.loop.run([one.generation for one in prepared], timeout_s)
        return [self.tokenizer.decode(generated) for generated in tokens]
