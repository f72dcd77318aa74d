"""Connections to RabbitMQ whose writes of one event-loop turn go out as one.

aiormq writes each frame (a publish, an ack) to its socket as it comes: on loopback
every write is a system call that also runs the receiving side of TCP. Publishes and
acks come in bursts (the jobs one turn of the loop enqueues or finishes), so holding
the writes of a turn and sending them with one write at its end costs no latency
(the turn is microseconds) and saves most of those calls, here and in the broker.
Plain `amqp://` only; `amqps://` keeps aiormq's own transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

__all__ = ["CorkedTransportFactory", "CorkedWriter"]


class CorkedWriter(asyncio.StreamWriter):
    """A StreamWriter that sends what one loop turn wrote in one write at its end.

    `drain` and `close` send what is held first, so the order of bytes and the
    back-pressure of the transport are as with the plain writer."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._own_loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` until the end of this loop turn."""
        if not self._held:
            self._own_loop.call_soon(self.send_held)
        self._held.append(bytes(data))

    def writelines(self, data: Any) -> None:
        """Hold each chunk of `data` until the end of this loop turn."""
        for chunk in data:
            self.write(chunk)

    def send_held(self) -> None:
        """Write what is held, as one write (nothing when the transport is closing)."""
        held = self._held
        if not held:
            return
        self._held = []
        if not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def drain(self) -> None:
        """Send what is held, then wait as `StreamWriter.drain` does."""
        self.send_held()
        await super().drain()

    def close(self) -> None:
        """Send what is held, then close."""
        self.send_held()
        super().close()


class CorkedTransportFactory(TCPTransportFactory):
    """aiormq's TCP transport with a `CorkedWriter`."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to `url` as `asyncio.open_connection` does, writing through a
        `CorkedWriter`."""
        kwargs.pop("ssl_context_provider", None)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(
                lambda: protocol, host=url.host or "localhost", port=url.port or 5672, **kwargs
            )
        except OSError as exc:
            raise AMQPConnectionError(*exc.args) from exc
        return reader, CorkedWriter(transport, protocol, reader, loop)
