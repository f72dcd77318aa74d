"""Settling the deliveries of one consumer channel, acks coalesced.

Acks asked for in one event-loop turn go out together once that turn is over: the
ones that, with what is already settled, form a contiguous run of delivery tags
from the lowest tag still unsettled on the channel as ONE `basic.ack` with
`multiple=True` for the highest; the others one by one (a `multiple` ack up to N
acks every unsettled delivery up to N, so it may cover only tags being acked).

The rules that keep it safe:

- `await ack(tag)` returns once the ack's frame was handed to the connection (as
  an uncoalesced `basic_ack(wait=False)` does), or the channel is gone: then the
  broker redelivers the message anyway. Nothing is held back past that return.
- A tag being requeued or rejected counts as unsettled until its `basic.nack` /
  `basic.reject` frame was handed to the connection: a `multiple` ack is computed
  only afterwards, so its frame comes later on the wire and cannot cover that tag.
  A requeue or reject that did not get out (cancelled) leaves its tag unsettled for
  good: acks above it go out one by one until the channel is replaced.
- Only tags seen contiguously from 1 are covered (`_seen_through`): a delivery the
  broker sent that was not handed to us yet is never acked by a `multiple`.
- One task sends the frames, so one coalesced ack never overtakes another.
- Tags belong to their channel: a `Settler` dies with it, and the settles of a
  closed channel send nothing (the broker gave those messages back already).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable

from aiormq.abc import AbstractChannel

from .amqp_link import FAILED, aborted

__all__ = ["Settler"]


async def _quietly(settle: Awaitable[None]) -> None:
    """Await a settle call; a channel that died meanwhile is not an error."""
    try:
        await settle
    except FAILED as exc:
        if aborted(exc):
            raise


class Settler:
    """The delivery tags of one consumer channel and how they are settled."""

    __slots__ = ("_acks", "_flusher", "_seen_ahead", "_seen_through", "_unsettled", "channel")

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        # Tags delivered whose settle frame was not handed to the connection yet.
        self._unsettled: set[int] = set()
        self._seen_through = 0  # every tag up to this one was delivered to us
        self._seen_ahead: set[int] = set()  # seen above a gap (not expected from aiormq)
        self._acks: list[tuple[int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """True once the channel is closed: its deliveries are back in the queue."""
        return self.channel.is_closed

    def delivered(self, tag: int) -> None:
        """Record a delivery's tag; call before anything settles it."""
        self._unsettled.add(tag)
        if tag == self._seen_through + 1:
            self._seen_through = tag
            ahead = self._seen_ahead
            while ahead and self._seen_through + 1 in ahead:
                self._seen_through += 1
                ahead.discard(self._seen_through)
        elif tag > self._seen_through:
            self._seen_ahead.add(tag)

    async def ack(self, tag: int) -> None:
        """Ack `tag` with the other acks of this loop turn; see the module docstring."""
        if self.channel.is_closed:
            return
        done = asyncio.get_running_loop().create_future()
        self._acks.append((tag, done))
        if self._flusher is None:
            # Its first step runs after the tasks ready in this turn: their acks join.
            self._flusher = asyncio.create_task(self._flush(), name="amqp acks")
        # A cancelled caller only stops waiting: the ack is still sent.
        await done

    async def nack(self, tag: int, *, requeue: bool) -> None:
        """Send `basic.nack` (requeue) or `basic.reject` (dead-letter) for `tag` now."""
        if self.channel.is_closed:
            return
        if requeue:
            await _quietly(self.channel.basic_nack(tag, requeue=True, wait=False))
        else:
            await _quietly(self.channel.basic_reject(tag, requeue=False, wait=False))
        # Only now: a multiple ack computed from here on follows this frame.
        self._unsettled.discard(tag)

    async def drain(self) -> None:
        """Wait until the acks asked for so far were handed to the connection."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.wait([flusher])

    async def _flush(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, []
                try:
                    await self._send(sorted(tag for tag, _ in batch))
                finally:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._flusher = None
            # Left by an error (or a cancellation): their waiters must not hang.
            batch, self._acks = self._acks, []
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _send(self, tags: list[int]) -> None:
        """Ack `tags` (sorted): one multiple ack for the run, the rest one by one."""
        unsettled = self._unsettled
        acking = set(tags)
        # The lowest tag that stays unsettled: a multiple ack must stop below it.
        lowest = min((t for t in unsettled if t not in acking), default=math.inf)
        limit = min(lowest - 1, self._seen_through)
        unsettled.difference_update(tags)
        covered = 0
        while covered < len(tags) and tags[covered] <= limit:
            covered += 1
        channel = self.channel
        try:
            if covered:
                await channel.basic_ack(tags[covered - 1], multiple=covered > 1, wait=False)
            for tag in tags[covered:]:
                await channel.basic_ack(tag, wait=False)
        except FAILED as exc:  # the channel died: the broker gives the messages back
            if aborted(exc):
                raise
