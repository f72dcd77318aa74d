"""The `store` fixture of the contract suites that need one store per backend
(test_state_store.py makes two nodes of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.redis import RedisStateStore
from asyncproc.interfaces import StateStore
from tests.contract import RecordingHub, delete_prefix

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """A started store of the backend under test; what it stored is deleted afterwards."""
    if request.param == "memory":
        async with MemoryStateStore(RecordingHub()) as memory:
            yield memory
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("unique_prefix")
    redis_store = RedisStateStore(url, prefix=prefix, hub=RecordingHub())
    try:
        async with redis_store:
            await redis_store.start()
            yield redis_store
    finally:
        await delete_prefix(url, prefix)
