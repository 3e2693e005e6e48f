from __future__ import annotations

from collections.abc import Iterator

import pytest

from bigmodel.runtime.embedded import embedded_ray


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One small local Ray cluster shared by the end-to-end tests of this process."""
    with embedded_ray(num_cpus=2) as address:
        yield address
