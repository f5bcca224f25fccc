from __future__ import annotations

import pytest

from ._fakes import Harness


@pytest.fixture
async def harnesses():
    """Make started ``Harness`` engines (``hosts`` and options as ``Harness`` takes them); stop them after."""
    made = []

    async def factory(hosts, **options):
        harness = Harness(hosts=hosts, **options)
        await harness.engine.start()
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.engine.stop()
        await harness.client.aclose()
