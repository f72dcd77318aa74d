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
