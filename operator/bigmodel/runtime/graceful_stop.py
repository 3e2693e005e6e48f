"""How `bigmodel serve` and `bigmodel train` stop: the same on SIGTERM (a process manager, `docker stop`, a CI runner)
as on Ctrl-C, and after finishing what is in flight.

The core worker that `ray.init` starts in the command's process installs Ray's C++ failure handler for SIGTERM, which
prints a crash dump and kills the process with the cluster still up; GracefulStop, entered after `ray.init`, takes both
signals back for the duration of its block.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """The first SIGINT or SIGTERM runs `finish` (drain, checkpoint) in a thread, then raises KeyboardInterrupt in the
    main thread, where the command stops as it does on Ctrl-C; a second signal raises it at once. Without `finish`,
    the first signal raises it at once."""

    def __init__(self, finish: Callable[[], None] | None = None) -> None:
        self._finish = finish
        self._finishing = False
        self._closed = threading.Event()
        self._previous: dict[int, object] = {}
        self.signum: int | None = None
        """The signal that stopped the block, if one did."""

    def __enter__(self) -> GracefulStop:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._closed.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process that a signal stopped: 128 + its number (130 for Ctrl-C)."""
        return 128 + (self.signum or signal.SIGINT)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self._finish is None or self._finishing:
            raise KeyboardInterrupt
        self._finishing = True
        threading.Thread(target=self._finish_then_stop, name="graceful-stop", daemon=True).start()

    def _finish_then_stop(self) -> None:
        assert self._finish is not None
        try:
            self._finish()
        except Exception as error:
            # Stopping must not depend on it: what was in flight is lost, as on a second signal.
            logger.warning("could not finish what was in flight before stopping: %s", error)
        if not self._closed.is_set():
            # Runs this class's handler in the main thread, which, finishing already, raises KeyboardInterrupt there.
            _thread.interrupt_main(self.signum or signal.SIGINT)
