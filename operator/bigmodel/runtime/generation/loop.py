"""An engine stepped on a thread of its own, with the calls a server makes: stream one request's tokens (async), or
run a list of requests to the end (blocking)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence

from bigmodel.runtime.generation.engine import ERROR, Engine, GenerationRequest, Output

log = logging.getLogger(__name__)


class EngineLoop:
    """Steps the engine while it has work and sleeps when it has none. Torch releases the GIL in its kernels, so the
    server's event loop keeps taking requests while a step runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._work = threading.Event()
        engine.wake = self._work.set
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._work.wait()
            self._work.clear()
            while not self.engine.idle:
                try:
                    self.engine.step()
                except Exception as error:  # noqa: BLE001 - any failure of the model ends its requests, not the loop
                    log.exception("generation step failed")
                    self.engine.fail(f"the model failed: {type(error).__name__}: {error}")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Output]:
        """The request's tokens as they are made, tokens made meanwhile merged into one output. Leaving the loop early
        (a client gone, a timeout) cancels the request, which frees its place in the batch at the next step."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Output] = asyncio.Queue()

        def deliver(output: Output) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, output)
            except RuntimeError:
                # The event loop closed under a request: nobody is left to read it.
                handle.cancel()

        handle = self.engine.submit(request, deliver)
        finished = False
        try:
            while not finished:
                outputs = [await queue.get()]
                while outputs[-1].finish is None and not queue.empty():
                    outputs.append(queue.get_nowait())
                last = outputs[-1]
                finished = last.finish is not None
                yield Output(tuple(token for output in outputs for token in output.tokens), last.finish, last.error)
        finally:
            if not finished:
                handle.cancel()

    def run(self, requests: Sequence[GenerationRequest], timeout_s: float | None = None) -> list[list[int]]:
        """The new tokens of every request, generated together; raises RuntimeError when the model failed."""
        results: list[list[int]] = [[] for _ in requests]
        done = threading.Semaphore(0)
        errors: list[str] = []

        def collector(index: int):  # type: ignore[no-untyped-def]
            def collect(output: Output) -> None:
                results[index].extend(output.tokens)
                if output.finish == ERROR:
                    errors.append(output.error or "the model failed")
                if output.finish is not None:
                    done.release()

            return collect

        handles = [self.engine.submit(request, collector(index)) for index, request in enumerate(requests)]
        for _ in requests:
            if not done.acquire(timeout=timeout_s):
                for handle in handles:
                    handle.cancel()
                raise TimeoutError(f"generation did not finish within {timeout_s} s")
        if errors:
            raise RuntimeError(errors[0])
        return results
