"""The corked transport (asyncproc/corked.py) under the AMQP connections and the HTTP
server: the writes of one event-loop turn reach the socket as one write, in order;
close sends what is held first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from asyncproc.backends.amqp_cork import CorkedTransportFactory
from asyncproc.corked import CorkedTransport
from tests.support import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # transports of asyncio's own, whose writes can be watched


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


async def arrived(got: bytearray, expected: bytes) -> None:
    async def received() -> bytes:
        return bytes(got)

    await wait_until(received, lambda data: data == expected)


async def test_one_turn_of_writes_is_one_write_and_close_sends_what_is_held() -> None:
    async with sink() as (port, got):
        loop = asyncio.get_running_loop()
        inner, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sent: list[bytes] = []
        real_write = inner.write

        def spy(data: bytes | bytearray | memoryview) -> None:
            sent.append(bytes(data))
            real_write(data)

        inner.write = spy  # type: ignore[method-assign]
        corked = CorkedTransport(inner, loop)
        corked.write(b"a")
        corked.write(bytearray(b"b"))
        corked.writelines([b"c", memoryview(b"d")])
        assert sent == []  # held until the end of this turn
        assert corked.get_write_buffer_size() == 4
        await asyncio.sleep(0)  # one turn of the loop
        assert sent == [b"abcd"]
        corked.write(b"e")
        corked.close()  # what is held goes before the close
        assert sent == [b"abcd", b"e"]
        await arrived(got, b"abcde")


async def test_the_amqp_factory_writes_through_the_cork() -> None:
    async with sink() as (port, got):
        _, writer = await CorkedTransportFactory().create(URL(f"amqp://127.0.0.1:{port}/"))
        assert isinstance(writer.transport, CorkedTransport)
        writer.write(b"AMQP")
        writer.write(b"\x00\x00\x09\x01")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await arrived(got, b"AMQP\x00\x00\x09\x01")


async def test_served_answers_through_the_cork_are_whole_and_stream_as_they_come() -> None:
    # Through uvicorn with the protocol `asyncproc serve` uses (`live_server` serves
    # with it): plain answers on one kept-alive connection, and a streamed answer
    # whose first part arrives before the second is even written.
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from asyncproc.corked_http import http_protocol
    from tests.support import live_server

    protocol = http_protocol()
    assert not isinstance(protocol, str)  # httptools is installed here: corked
    release = asyncio.Event()

    async def plain(request: Request) -> Response:
        return JSONResponse({"n": int(request.path_params["n"])})

    async def stream(request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            yield b"first\n"
            await release.wait()
            yield b"second\n"

        return StreamingResponse(parts(), media_type="text/plain")

    app = Starlette(routes=[Route("/plain/{n}", plain), Route("/stream", stream)])
    async with live_server(app) as base, httpx.AsyncClient(base_url=base) as client:
        for n in range(3):
            answer = await client.get(f"/plain/{n}")
            assert answer.json() == {"n": n}
        async with client.stream("GET", "/stream") as streamed:
            lines = streamed.aiter_lines()
            assert await anext(lines) == "first"  # before the answer ended
            release.set()
            assert await anext(lines) == "second"
