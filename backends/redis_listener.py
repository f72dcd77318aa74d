"""The Redis store's change listener: every change published by any node, to this node's hub.

One subscribed connection per node reads the `changes` channel and hands each
`Change` to the node's `ChangeHub` (long polls, SSE, stop signals). It reconnects
with backoff, and after each (re)subscription re-reads what the node watches,
since changes published while it was away are lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncproc.changes import Change, ChangeHub
from asyncproc.errors import BackendUnavailable

__all__ = ["ChangeListener"]

log = logging.getLogger("asyncproc.redis")

_CHANGES = msgspec.msgpack.Decoder(Change)
# Seconds of silence on the change listener's connection before it sends a PING.
_IDLE_PING = 5.0


class ChangeListener:
    """Delivers the changes published on `channel` to `hub`, reconnecting by itself.

    `client` is its own Redis client (no hidden retries, so every reconnect is seen
    and followed by `resync`).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        hub: ChangeHub,
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self._sub_redis = client
        self._channel = channel
        self.hub = hub
        self._resync = resync
        self._task: asyncio.Task[None] | None = None
        self._tried: asyncio.Event | None = None
        self.listening = False

    async def start(self) -> None:
        """Start listening; wait (briefly) for the first subscription attempt."""
        if self._task is not None:
            return
        self._tried = asyncio.Event()
        self._task = asyncio.create_task(self._listen(), name="asyncproc-redis-listener")
        try:
            await asyncio.wait_for(self._tried.wait(), 5.0)
        except TimeoutError:
            pass

    async def aclose(self) -> None:
        """Stop listening; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # `wait`, not `await task`: a cancellation of our own caller still raises.
            await asyncio.wait({task})

    async def _listen(self) -> None:
        """Deliver every published change to this node's hub; reconnect with backoff."""
        delay = 0.05
        down = False
        while True:
            pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.listening = True
                if down:
                    log.info("redis change listener reconnected")
                delay, down = 0.05, False
                if self._tried is not None:
                    self._tried.set()
                # Changes published while we were away are lost: re-read what we watch.
                await self._resync()
                await self._pump(pubsub)
            except (RedisError, OSError, BackendUnavailable) as exc:
                # Once per outage: the retries below would repeat it every two seconds.
                if not down:
                    log.warning("redis change listener lost its connection: %s", exc)
                down = True
            finally:
                self.listening = False
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._tried is not None:
                self._tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _pump(self, pubsub: PubSub) -> None:
        """Read the subscribed connection's messages until it fails.

        Straight from the connection: `get_message` costs several times the
        delivery itself, and the listener sees every change of every node.
        """
        connection = pubsub.connection
        if connection is None:
            raise RedisConnectionError("the pub/sub connection is not open")
        pinged = False
        while True:
            # With a timeout, an idle read answers None instead of raising.
            # push_request: the messages are RESP3 pushes (redis-py 8 speaks RESP3).
            reply = await connection.read_response(timeout=_IDLE_PING, push_request=True)
            if reply is None:
                if pinged:
                    raise RedisTimeoutError("no answer to PING on the change listener")
                # Quiet: a PING shows whether the connection is still there (the
                # answer, a "pong" message, is skipped below).
                await connection.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self._deliver(reply[2])

    def _deliver(self, data: bytes) -> None:
        try:
            change = _CHANGES.decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed change message on %s", self._channel)
            return
        try:
            self.hub.publish(change)
        except Exception:
            # A failing stop handler must not silence every later change on this node.
            log.exception("change handler failed for job %s", change.job_id)
