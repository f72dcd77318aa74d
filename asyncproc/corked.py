"""A transport that sends what one event-loop turn wrote as one write at its end.

On loopback and on a busy node, every `write` to a socket is a system call that
also runs the receiver's side of TCP. Protocols here write in small pieces (an HTTP
answer's head, then its body; one AMQP frame per publish or ack), and the pieces of
one turn of the event loop belong together, so they are held until the end of the
turn (`loop.call_soon`, microseconds) and sent with one write. Order is kept (every
write goes through the hold) and `close`/`write_eof` send what is held first.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CorkedTransport"]


class CorkedTransport(asyncio.Transport):
    """Wraps `transport`: writes of one loop turn reach it as one `write`."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` until the end of this loop turn."""
        if not self._held:
            self._loop.call_soon(self.send_held)
        self._held.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        """Hold each chunk until the end of this loop turn."""
        for data in list_of_data:
            self.write(data)

    def send_held(self) -> None:
        """Write what is held, as one write (dropped when the transport is closing)."""
        held = self._held
        if not held:
            return
        self._held = []
        if not self._inner.is_closing():
            self._inner.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Send what is held, then close."""
        self.send_held()
        self._inner.close()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.send_held()
        self._inner.write_eof()

    def abort(self) -> None:
        """Drop what is held and abort."""
        self._held = []
        self._inner.abort()

    def can_write_eof(self) -> bool:
        """See `asyncio.WriteTransport.can_write_eof`."""
        return self._inner.can_write_eof()

    def is_closing(self) -> bool:
        """See `asyncio.BaseTransport.is_closing`."""
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """See `asyncio.BaseTransport.get_extra_info`."""
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """See `asyncio.BaseTransport.set_protocol`."""
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """See `asyncio.BaseTransport.get_protocol`."""
        return self._inner.get_protocol()

    def is_reading(self) -> bool:
        """See `asyncio.ReadTransport.is_reading`."""
        return self._inner.is_reading()

    def pause_reading(self) -> None:
        """See `asyncio.ReadTransport.pause_reading`."""
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        """See `asyncio.ReadTransport.resume_reading`."""
        self._inner.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """See `asyncio.WriteTransport.set_write_buffer_limits`."""
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        """What the wrapped transport buffers, and what is held."""
        return self._inner.get_write_buffer_size() + sum(len(data) for data in self._held)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """See `asyncio.WriteTransport.get_write_buffer_limits`."""
        return self._inner.get_write_buffer_limits()
