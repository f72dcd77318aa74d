"""One AMQP connection kept open with backoff, and the failure handling the
RabbitMQ backends share (what a lost connection raises, backoff, channel helpers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any, cast

import aiormq
from aiormq import Channel
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import AMQPError

from asyncproc.errors import BackendUnavailable

from .amqp_cork import CorkedTransportFactory

__all__ = [
    "BACKOFF_MIN",
    "FAILED",
    "LOST",
    "Link",
    "aborted",
    "backoff",
    "cancelled_for_real",
    "close_channel",
    "describe",
    "open_channel",
]

log = logging.getLogger("asyncproc.rabbitmq")

# What a dropped connection or channel raises out of aiormq (ChannelInvalidStateError
# and "connection closed" are RuntimeErrors there).
LOST = (AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError)
# aiormq also rejects the futures of a closed channel with CancelledError.
FAILED = (*LOST, asyncio.CancelledError)
BACKOFF_MIN = 0.05
_BACKOFF_MAX = 5.0
_CONNECT_TIMEOUT = 10.0


def describe(exc: BaseException) -> str:
    """`exc` for a log line or an outage message: its type, and its text if any."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def cancelled_for_real() -> bool:
    """True when the current task was asked to stop (not a CancelledError aiormq
    uses to tell that a channel went away)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def aborted(exc: BaseException) -> bool:
    """True when `exc` is this task's own cancellation, which must propagate."""
    return isinstance(exc, asyncio.CancelledError) and cancelled_for_real()


def backoff(delay: float) -> float:
    """The next delay: doubled, capped, with jitter so nodes do not reconnect in step."""
    return min(delay * 2, _BACKOFF_MAX) * random.uniform(0.8, 1.2)


async def open_channel(connection: AbstractConnection, *, confirms: bool) -> Channel:
    """A new channel; typed as aiormq's `Channel`, whose publish takes `wait=False`."""
    return cast(Channel, await connection.channel(publisher_confirms=confirms))


HEARTBEAT = 10  # seconds; aiormq's own default (60) leaves a frozen peer minutes


def with_heartbeat(url: str, seconds: int = HEARTBEAT) -> str:
    """`url` with a `heartbeat` parameter unless it names one: the broker then closes
    the connection of a frozen or cut-off node after about two heartbeats, and gives
    its unacked messages to other consumers."""
    if "heartbeat=" in url:
        return url
    return url + ("&" if "?" in url else "?") + f"heartbeat={seconds}"


def _transport(url: str) -> dict[str, Any]:
    """aiormq's connect arguments for `url`'s transport (`amqp_cork` for plain TCP)."""
    if url.startswith("amqp://"):
        return {"transport_factory": CorkedTransportFactory()}
    return {}


class Link:
    """One AMQP connection that is reopened with backoff whenever it drops."""

    def __init__(self, url: str, name: str) -> None:
        self.url = with_heartbeat(url)
        self.name = name
        self.connection: AbstractConnection | None = None
        self.generation = 0  # counts connections made, so users notice a new one
        self.last_error = "not connected yet"
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the connect-and-watch task (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._keep_open(), name=f"amqp link {self.name}")

    def current(self) -> AbstractConnection | None:
        """The connection if it is open right now."""
        connection = self.connection
        return connection if connection is not None and not connection.is_closed else None

    async def get(self, within: float | None) -> AbstractConnection:
        """The open connection, waiting up to `within` s for one; else `BackendUnavailable`."""
        self.start()
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while True:
            connection = self.current()
            if connection is not None:
                return connection
            if self._closed:
                raise BackendUnavailable("rabbitmq", "the connection is closed")
            try:
                async with asyncio.timeout_at(deadline):
                    if self._up.is_set():
                        # Closed, but the watcher has not noticed yet: give it a moment.
                        await asyncio.sleep(0.01)
                    else:
                        await self._up.wait()
            except TimeoutError:
                raise BackendUnavailable("rabbitmq", self.last_error) from None

    async def _keep_open(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    connection = await aiormq.connect(
                        self.url,
                        client_properties={"connection_name": self.name},
                        **_transport(self.url),
                    )
            except FAILED as exc:
                if aborted(exc):
                    raise
                self.last_error = describe(exc)
                await asyncio.sleep(delay)
                delay = backoff(delay)
                continue
            delay = BACKOFF_MIN
            self.connection = connection
            self.generation += 1
            self._up.set()
            if self.generation > 1:
                log.info("rabbitmq connection %r is back", self.name)
            try:
                await connection.closing
                self.last_error = "the connection was closed"
            except Exception as exc:  # the reason the connection closed
                self.last_error = describe(exc)
            self._up.clear()
            self.connection = None
            log.warning(
                "rabbitmq connection %r lost (%s); reconnecting", self.name, self.last_error
            )

    async def aclose(self) -> None:
        """Stop reconnecting and close the connection."""
        self._closed = True
        self._up.set()  # wake waiters: they see `_closed`
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(*LOST):
                await connection.close()


async def close_channel(channel: AbstractChannel) -> None:
    """Close `channel` (waiting up to 5 s); one that is already gone is no error."""
    try:
        async with asyncio.timeout(5):
            await channel.close()
    except FAILED as exc:
        if aborted(exc):
            raise
