"""The corked AMQP transport (backends/amqp_cork.py): the writes of one event-loop
turn reach the socket as one write, in order; drain and close send what is held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from asyncproc.backends.amqp_cork import CorkedTransportFactory
from tests.support import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # a transport of asyncio's own, whose writes can be watched


@asynccontextmanager
async def sink() -> AsyncIterator[tuple[int, bytearray]]:
    """A local TCP server that keeps every byte it receives: (port, bytes)."""
    got = bytearray()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            got.extend(chunk)
        writer.close()

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], got
    finally:
        server.close()


async def test_one_turn_of_writes_is_one_write_and_drain_and_close_send_at_once() -> None:
    async with sink() as (port, got):
        _, writer = await CorkedTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
        sent: list[bytes] = []
        transport = writer.transport
        real_write = transport.write

        def spy(data: bytes | bytearray | memoryview) -> None:
            sent.append(bytes(data))
            real_write(data)

        transport.write = spy  # type: ignore[method-assign]
        writer.write(b"a")
        writer.write(bytearray(b"b"))
        writer.writelines([b"c", memoryview(b"d")])
        assert sent == []  # held until the end of this turn
        await asyncio.sleep(0)  # one turn of the loop
        assert sent == [b"abcd"]

        writer.write(b"e")
        await writer.drain()  # what is held goes before the wait
        assert sent == [b"abcd", b"e"]

        writer.write(b"f")
        writer.close()  # ... and before the close
        assert sent == [b"abcd", b"e", b"f"]
        await writer.wait_closed()

        async def received() -> bytes:
            return bytes(got)

        await wait_until(received, lambda data: data == b"abcdef")
