"""uvicorn's httptools protocol writing through a `CorkedTransport`: an answer's head
and body (two writes in uvicorn) leave in one write, so one system call per answer.
Where httptools is missing, uvicorn's own choice stands."""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["http_protocol"]


def http_protocol() -> type[asyncio.Protocol] | str:
    """The `http` setting of `uvicorn.Config` for a node."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol, as it is
        return "auto"

    from .corked import CorkedTransport

    class CorkedHttpToolsProtocol(HttpToolsProtocol):
        """`HttpToolsProtocol` over a `CorkedTransport`."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            """Wrap the connection's transport, then as uvicorn does."""
            # uvloop's transports are not `asyncio.Transport` subclasses, but are ones.
            inner = cast("asyncio.Transport", transport)
            super().connection_made(CorkedTransport(inner, self.loop))

    return CorkedHttpToolsProtocol
