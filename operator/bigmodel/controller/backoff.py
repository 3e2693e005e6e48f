"""How long to wait after failures in a row: the one backoff rule of the operator's retry loops."""

from __future__ import annotations


def exponential_backoff_s(failures: int, first_s: float, max_s: float) -> float:
    """`first_s` after the first failure, doubled after each further one in a row, never more than `max_s`."""
    return min(max_s, first_s * 2 ** min(failures - 1, 16))
