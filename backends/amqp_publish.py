"""Job messages published on a confirming channel, the publishes of one event-loop
turn written together.

aiormq's `basic_publish` does for every message what a burst needs once: each call
queues on the channel's lock behind the others, marshals its frames, draws a random
message id and hands its own frame to the connection's writer. A `Batcher` numbers
the publishes of one turn under one hold of that lock and hands them over as one
frame (the broker confirms publish n with delivery tag n, so the numbers must follow
the order on the wire: the lock keeps aiormq's own publishes on the channel out of
the way meanwhile). Their confirmations are registered with the channel as aiormq
registers its own, so aiormq settles them: the broker's ack, a nack
(`DeliveryError`) or a mandatory message returned unroutable (`PublishError`); the
channel closing fails those still open (one callback for all, where aiormq's own
futures each carry several).

Every message is persistent (delivery mode 2) and mandatory, with a message id
unique on its channel (a returned message is matched to its publish by it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
from typing import Any

import pamqp.frame
from aiormq import Channel
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec

__all__ = ["Batcher", "header_frame"]

_FRAME_END = b"\xce"
_HEADER, _BODY = 2, 3
_BASIC = 60
# Property flags: delivery-mode (bit 12) and message-id (bit 7), in that order.
_FLAGS = 0x1000 | 0x0080
_PERSISTENT = 2


def header_frame(channel: int, body_size: int, message_id: bytes) -> bytes:
    """The content header frame of a persistent message with `message_id`."""
    payload = (
        struct.pack(">HHQHB", _BASIC, 0, body_size, _FLAGS, _PERSISTENT)
        + bytes((len(message_id),))
        + message_id
    )
    return struct.pack(">BHI", _HEADER, channel, len(payload)) + payload + _FRAME_END


def _body_frames(channel: int, body: bytes, max_size: int) -> list[bytes]:
    return [
        struct.pack(">BHI", _BODY, channel, len(chunk)) + chunk + _FRAME_END
        for chunk in (body[i : i + max_size] for i in range(0, len(body), max_size))
    ]


class Batcher:
    """Publishes on one confirming channel, written once per loop turn."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._pending: list[tuple[bytes, bytes, asyncio.Future[asyncio.Future[Any]]]] = []
        self._methods: dict[tuple[str, str], bytes] = {}
        self._ids = itertools.count()
        self._id_prefix = os.urandom(4).hex().encode() + b"."
        self._flushing: set[asyncio.Task[None]] = set()
        self._closed: BaseException | None = None
        channel.closing.add_done_callback(self._on_close)

    def _on_close(self, closing: asyncio.Future[Any]) -> None:
        """Fail the confirmations still open: the broker will confirm none of them."""
        reason = None if closing.cancelled() else closing.exception()
        self._closed = reason or ChannelInvalidStateError("the channel closed")
        for confirmation in list(self.channel.confirmations.values()):
            if isinstance(confirmation, asyncio.Future) and not confirmation.done():
                confirmation.set_exception(self._closed)
                confirmation.exception()  # seen: a publisher that gave up logs nothing

    async def publish(self, exchange: str, routing_key: str, body: bytes) -> Any:
        """Publish `body` (persistent, mandatory); return the broker's confirmation
        frame, or raise as aiormq's `basic_publish` does."""
        method = self._methods.get((exchange, routing_key))
        if method is None:
            frame = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
            method = self._methods[(exchange, routing_key)] = pamqp.frame.marshal(
                frame, self.channel.number
            )
        numbered: asyncio.Future[asyncio.Future[Any]] = asyncio.get_running_loop().create_future()
        if not self._pending:
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        self._pending.append((method, body, numbered))
        confirmation = await numbered
        return await confirmation

    async def _flush(self) -> None:
        """Number what this turn published and hand it to the connection as one frame."""
        channel = self.channel
        pending: list[tuple[bytes, bytes, asyncio.Future[asyncio.Future[Any]]]] = []
        try:
            async with channel.lock:
                pending, self._pending = self._pending, []
                settle = await self._number([p for p in pending if not p[2].done()])
            for numbered, confirmation in settle:
                numbered.set_result(confirmation)
        except BaseException as exc:  # the channel closed, or this task was cancelled
            if not pending:
                pending, self._pending = self._pending, []
            for _, _, numbered in pending:
                if not numbered.done():
                    numbered.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _number(
        self, live: list[tuple[bytes, bytes, asyncio.Future[asyncio.Future[Any]]]]
    ) -> list[tuple[asyncio.Future[asyncio.Future[Any]], asyncio.Future[Any]]]:
        """Give each publish its delivery tag and confirmation, then write them all;
        called under the channel's lock. Not handed over (cancelled while the writer's
        queue was full), the numbers are taken back: the broker saw none of them."""
        channel = self.channel
        if self._closed is not None:
            raise self._closed
        loop = asyncio.get_running_loop()
        first = channel.delivery_tag
        ids = channel.message_id_delivery_tag
        if len(ids) > 2 * len(channel.confirmations) + 1024:
            # Forget the ids of settled publishes, in bulk (aiormq forgets its own).
            for stale in [i for i, tag in ids.items() if tag not in channel.confirmations]:
                del ids[stale]
        number = channel.number
        max_size = channel.max_content_size
        parts: list[bytes] = []
        settle: list[tuple[asyncio.Future[asyncio.Future[Any]], asyncio.Future[Any]]] = []
        registered: list[tuple[int, str]] = []
        for method, body, numbered in live:
            message_id = self._id_prefix + str(next(self._ids)).encode()
            text_id = message_id.decode()
            tag = channel.delivery_tag = channel.delivery_tag + 1
            confirmation = loop.create_future()
            channel.confirmations[tag] = confirmation
            ids[text_id] = tag
            registered.append((tag, text_id))
            parts += (method, header_frame(number, len(body), message_id))
            parts += _body_frames(number, body, max_size)
            settle.append((numbered, confirmation))
        if not settle:
            return settle
        try:
            await channel.write_queue.put(ChannelFrame(b"".join(parts), should_close=False))
        except BaseException:
            channel.delivery_tag = first
            for tag, text_id in registered:
                if tag in channel.confirmations:
                    channel.confirmations.pop(tag).cancel()
                if ids.get(text_id) == tag:
                    del ids[text_id]
            raise
        return settle
