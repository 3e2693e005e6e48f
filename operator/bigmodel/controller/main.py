"""Running the operator: `bigmodel operator`, or in-process with injected clients (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import kopf

from bigmodel.controller import handlers
from bigmodel.controller.settings import OperatorSettings


def operator_coroutine(
    settings: OperatorSettings,
    *,
    memo: kopf.Memo | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
) -> Any:
    """kopf.operator() for our handlers; `memo` may carry a `kube` or `ray` client to use instead of the real ones."""
    memo = memo if memo is not None else kopf.Memo()
    memo["settings"] = settings
    port = settings.liveness_port
    return kopf.operator(
        registry=handlers.REGISTRY,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.peering_priority if settings.peering_priority is not None else random.randint(1, 2**30),
        liveness_endpoint=f"http://0.0.0.0:{port}/healthz" if port else None,
        memo=memo,
        ready_flag=ready_flag,
        stop_flag=stop_flag,
    )


def run_operator(settings: OperatorSettings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(operator_coroutine(settings))
