from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.emulator import PROJECT_CRDS, Emulator, KubeClient, running_emulator


@pytest.fixture()
def emulator() -> Iterator[Emulator]:
    """A fresh API emulator per test: recorded calls and objects never leak between tests."""
    with running_emulator(PROJECT_CRDS) as running:
        yield running


@pytest.fixture()
async def kube(emulator: Emulator) -> AsyncIterator[KubeClient]:
    async with KubeClient(emulator.url) as client:
        yield client
