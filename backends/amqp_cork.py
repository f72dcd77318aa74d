"""RabbitMQ connections whose writes of one event-loop turn go out as one
(`asyncproc.corked`): aiormq writes every frame (a publish, an ack) as it comes, and
they come in bursts (the jobs one turn of the loop enqueues or finishes).
Plain `amqp://` only; `amqps://` keeps aiormq's own transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory
from aiormq.exceptions import AMQPConnectionError
from yarl import URL

from asyncproc.corked import CorkedTransport

__all__ = ["CorkedTransportFactory"]


class CorkedTransportFactory(TCPTransportFactory):
    """aiormq's TCP transport, writing through a `CorkedTransport`."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to `url` as `asyncio.open_connection` does."""
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
        corked = CorkedTransport(transport, loop)
        return reader, asyncio.StreamWriter(corked, protocol, reader, loop)
