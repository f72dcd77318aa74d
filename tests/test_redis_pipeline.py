"""RESP packing of the Redis pipeline: hiredis's C packer and the Python one write the
same bytes, the bytes redis-py would send (float and int arguments included)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import PythonRespSerializer

from asyncproc.backends import redis_pipeline
from asyncproc.backends.redis_pipeline import _pack, _pack_python

args = st.one_of(
    st.binary(max_size=50),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
)
commands = st.lists(
    st.tuples(st.sampled_from(["EVALSHA", "ZADD", "HGET"]), *[args] * 3), min_size=1, max_size=5
)


@given(commands)
def test_both_packers_write_what_redis_py_writes(batch: list[tuple[object, ...]]) -> None:
    serializer = PythonRespSerializer(buffer_cutoff=10**9, encode=_encode)
    expected = b"".join(b"".join(serializer.pack(*command)) for command in batch)
    assert _pack_python(batch) == expected  # type: ignore[arg-type]
    assert _pack(batch) == expected  # type: ignore[arg-type]


def _encode(value: object) -> bytes:
    """How redis-py's Encoder writes an argument (floats by repr, ints by str)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def test_hiredis_packs_when_installed() -> None:
    pytest.importorskip("hiredis")
    assert redis_pipeline._pack_command is not None


@pytest.mark.redis
@pytest.mark.anyio
async def test_commands_of_neighbouring_loop_turns_leave_in_one_write(redis_url: str) -> None:
    # Callers a turn or two apart share a write (`_GATHER_TURNS`); each gets its reply.
    import asyncio

    import redis.asyncio as aioredis

    from asyncproc.backends.redis_pipeline import Pipeliner

    client = aioredis.Redis.from_url(redis_url)
    pipeliner = Pipeliner(client, timeout=5)
    writes: list[int] = []
    try:
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        real = connection.send_packed_command

        async def counting(command: object, check_health: bool = True) -> None:
            writes.append(1)
            await real(command, check_health=check_health)  # type: ignore[arg-type]

        connection.send_packed_command = counting  # type: ignore[method-assign]
        pipeliner._connection = connection
        first = pipeliner.send("ECHO", "a")
        await asyncio.sleep(0)  # the next turn of the loop
        second = pipeliner.send("ECHO", "b")
        assert [await first, await second] == [b"a", b"b"]
        assert len(writes) == 1
    finally:
        await pipeliner.aclose()
        await client.aclose()
