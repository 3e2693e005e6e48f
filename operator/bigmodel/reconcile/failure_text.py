"""One readable line from the failure text Ray hands back: a job's log tail, a Serve application's traceback.

Ray's job message carries up to 20,000 characters of colored driver log and Serve's carries a whole traceback; status
messages and Events need the headline and the error that caused it.
"""

from __future__ import annotations

import re

MAX_CHARS = 400

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Ray prefixes the lines it forwards from actors and tasks with their name and pid, and folds repeats.
_SOURCE_PREFIX = re.compile(r"^\(\w+ pid=\d+[^)]*\)\s*")
_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\]$")
_LOG_TAIL_NOTE = re.compile(r",?\s*last available logs.*$")
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception|Exit|Interrupt)\b:?")


def failure_summary(text: str, marker: str | None = None) -> str:
    """The first line, then the error behind it: the last line starting with `marker` (which is dropped) if any,
    else the last line naming an exception. Bounded to MAX_CHARS."""
    lines = [line for line in (_clean(raw) for raw in _ANSI.sub("", text).splitlines()) if line]
    if not lines:
        return ""
    headline = _LOG_TAIL_NOTE.sub("", lines[0]).rstrip(":. ")
    marked = [line[len(marker):] for line in lines if marker and line.startswith(marker)]
    errors = marked or [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
    summary = f"{headline}: {errors[-1]}" if errors else (headline if len(lines) > 1 else lines[0])
    return summary if len(summary) <= MAX_CHARS else summary[: MAX_CHARS - 1] + "…"


def _clean(line: str) -> str:
    return _REPEATED.sub("", _SOURCE_PREFIX.sub("", line.strip())).strip()
