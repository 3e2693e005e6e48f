"""The real bigmodel operator (Kopf and our handlers) run in a thread of the test process.

Only Ray is substituted, at the operator's RayClient seam: every Kubernetes call goes over HTTP to
the emulator, through the same clients the operator uses in a cluster.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kopf

from bigmodel.controller.main import operator_coroutine
from bigmodel.controller.settings import OperatorSettings
from tests.support.emulator import Emulator

START_TIMEOUT_S = 30.0


@contextmanager
def running_operator(emulator: Emulator, ray: Any | None, **settings: Any) -> Iterator[OperatorSettings]:
    """The operator watching the emulator until the block ends; raises if it is not ready in time.

    `ray` replaces the operator's Ray client; None keeps the real one (Ray's HTTP APIs on the head pods).
    """
    operator_settings = OperatorSettings(**({"liveness_port": None, "metrics_port": None} | settings))
    memo = kopf.Memo() if ray is None else kopf.Memo(ray=ray)
    ready, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(emulator.kubeconfig)

    def run() -> None:
        try:
            asyncio.run(
                operator_coroutine(operator_settings, memo=memo, ready_flag=ready, stop_flag=stop)
            )
        except BaseException as error:  # reported to the test thread below
            failure.append(error)

    thread = threading.Thread(target=run, name="bigmodel-operator", daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT_S):
            raise TimeoutError(f"the operator was not ready within {START_TIMEOUT_S} s: {failure}")
        yield operator_settings
    finally:
        stop.set()
        thread.join(timeout=30)
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if thread.is_alive():
            raise TimeoutError("the operator did not stop within 30 s")
