"""Text to tokens and back, and a conversation to a prompt, for every model the engine serves."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence


class ConversationRefused(ValueError):
    """A conversation the model's chat template does not take; str() says why."""


class Tokenizer(ABC):
    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """Text of tokens; a token cut short (a partial UTF-8 character) decodes to U+FFFD."""

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The prompt of a conversation ({"role", "content"} messages) by the model's own chat template, with the
        assistant's turn opened; None when the model has no template. Raises ConversationRefused."""
        return None


class ByteTokenizer(Tokenizer):
    """The built-in GPT's: a token is a byte of the UTF-8 text."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")
