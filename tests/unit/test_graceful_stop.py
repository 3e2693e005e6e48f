"""`bigmodel serve` and `bigmodel train` stop the same way on SIGTERM as on Ctrl-C: what is in flight first."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from bigmodel.runtime.graceful_stop import GracefulStop

WAIT_S = 5.0


def interrupted_within(seconds: float) -> None:
    """Sleep in short steps until the KeyboardInterrupt the test expects; fail if none comes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
    pytest.fail(f"no KeyboardInterrupt within {seconds} s of the signal")


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_first_signal_finishes_what_is_in_flight_then_stops(signum: int, exit_code: int) -> None:
    finished = threading.Event()
    stop = GracefulStop(finish=finished.set)
    with pytest.raises(KeyboardInterrupt), stop:
        os.kill(os.getpid(), signum)
        interrupted_within(WAIT_S)
    assert finished.is_set(), "the command stopped before finishing what was in flight"
    assert stop.exit_code == exit_code, "a shell reports 128 + the signal's number"


def test_a_second_signal_stops_at_once() -> None:
    release = threading.Event()
    stop = GracefulStop(finish=lambda: release.wait(60))
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt), stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)
            interrupted_within(WAIT_S)
    finally:
        release.set()
    assert time.monotonic() - started < WAIT_S
    assert stop.exit_code == 143, "the exit code is the first signal's"


def test_a_finish_that_fails_still_stops_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> None:
        raise RuntimeError("Ray refused to drain this node")

    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt), GracefulStop(finish=refuse):
        os.kill(os.getpid(), signal.SIGTERM)
        interrupted_within(WAIT_S)
    assert [record.getMessage() for record in caplog.records] == [
        "could not finish what was in flight before stopping: Ray refused to drain this node"
    ]
    assert all(record.exc_info is None for record in caplog.records), "a traceback is no message for a user"


def test_without_a_finish_the_signal_stops_at_once_and_handlers_come_back() -> None:
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop = GracefulStop()
    with pytest.raises(KeyboardInterrupt), stop:
        os.kill(os.getpid(), signal.SIGTERM)
        interrupted_within(WAIT_S)
    assert stop.exit_code == 143
    assert {signum: signal.getsignal(signum) for signum in before} == before, "the previous handlers were not restored"
