"""A sequence's new tokens as text for a client, piece by piece: never half a character, never part of a stop string."""

from __future__ import annotations

from collections.abc import Sequence

from bigmodel.runtime.generation.tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.stopped = False
        # Characters of the decoded text already handed out.
        self._sent = 0
        self._text = ""

    @property
    def text(self) -> str:
        """All the text so far, up to a stop string once one appeared."""
        return self._text

    def add(self, tokens: Sequence[int]) -> str:
        """The text that tokens make safe to hand out now; once a stop string appears, what precedes it, then ""."""
        if self.stopped:
            return ""
        self.tokens.extend(tokens)
        # The whole sequence each time: a token's text may depend on its neighbours (merged bytes, spacing).
        self._text = self.tokenizer.decode(self.tokens)
        found = [index for index in (self._text.find(stop) for stop in self.stop) if index >= 0]
        if found:
            self.stopped = True
            self._text = self._text[: min(found)]
            return self._take(len(self._text))
        return self._take(self._safe_end())

    def finish(self) -> str:
        """What is left once the sequence ended: text held back for a stop string that never came."""
        return self._take(len(self._text))

    def _safe_end(self) -> int:
        end = len(self._text)
        # A character cut short at the end decodes to one U+FFFD until its next bytes come; earlier ones are final
        # (bytes that are no UTF-8 at all, each its own U+FFFD).
        if end > self._sent and self._text[end - 1] == REPLACEMENT:
            end -= 1
        for stop in self.stop:
            for length in range(min(len(stop) - 1, end), 0, -1):
                if self._text[:end].endswith(stop[:length]):
                    end -= length
                    break
        return end

    def _take(self, end: int) -> str:
        piece = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return piece
