"""Errors as the one line a status message, an Event or a CLI summary has room for."""

from __future__ import annotations


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, or the type alone when there is no message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
