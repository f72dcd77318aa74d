"""Confirmed publishing over RabbitMQ: the callback exchange (API.md section 7) and
JSON messages to a durable queue (section 14)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Self

import anyio
import msgspec
from aiormq import Channel
from aiormq.abc import AbstractConnection
from aiormq.exceptions import ChannelNotFoundEntity
from pamqp import commands as spec

from asyncproc.config import Settings
from asyncproc.errors import BackendUnavailable
from asyncproc.hooks import CallbackShape
from asyncproc.model import Job

from .amqp_link import (
    BACKOFF_MIN,
    FAILED,
    Link,
    aborted,
    backoff,
    cancelled_for_real,
    close_channel,
    describe,
    open_channel,
)

__all__ = ["CallbackPublisher", "ConfirmedPublisher", "QueuePublisher"]

log = logging.getLogger("asyncproc.rabbitmq")

_STATUS_ENCODER = msgspec.json.Encoder()
_BATCH = 256

# A message waiting to go out: routing key, body, AMQP headers, and the future its
# sender waits on for the broker's confirm (None: nobody waits).
_Message = tuple[str, bytes, dict[str, str] | None, "asyncio.Future[None] | None"]


class ConfirmedPublisher:
    """Publishes messages through one exchange with publisher confirms, in order.

    `post` only queues a message (callers never wait for the broker); a background
    task publishes them with confirms and resends what was not confirmed after a
    reconnection, so a consumer may see a message twice. Subclasses declare what they
    publish to (`_declare`).
    """

    def __init__(self, url: str, exchange: str, *, buffer: int = 10_000, name: str) -> None:
        self.exchange = exchange
        self._link = Link(url, name)
        self._pending: asyncio.Queue[_Message] = asyncio.Queue(maxsize=buffer)
        # What the messages go to, for log lines.
        self.target = f"exchange {exchange}"
        self._channel: Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def _declare(self, connection: AbstractConnection) -> None:
        """Declare what the messages go to (on start-up)."""
        raise NotImplementedError

    async def start(self, within: float = 5.0) -> None:
        """Connect, declare what the messages go to, start publishing.

        Raises `BackendUnavailable` when the broker does not answer within `within` s.
        """
        connection = await self._link.get(within)
        try:
            async with asyncio.timeout(within):
                await self._declare(connection)
        except FAILED as exc:
            if aborted(exc):
                raise
            raise BackendUnavailable("rabbitmq", describe(exc)) from None
        self._task = asyncio.create_task(self._drain(), name=f"amqp {type(self).__name__}")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """Started for the duration of the block; what is queued is sent before it ends."""
        try:
            await self.start()
        except BaseException:
            await self._link.aclose()
            raise
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def post(self, routing: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Queue `body` (with AMQP `headers`, if any) for the exchange with routing key
        `routing` (waits only while the buffer is full)."""
        await self._pending.put((routing, body, headers, None))

    async def post_confirmed(
        self, routing: str, body: bytes, headers: dict[str, str] | None = None, within: float = 5.0
    ) -> bool:
        """Queue `body` like `post`, then wait up to `within` seconds for the broker's
        confirm: True once confirmed, False when it did not come in time (the message
        stays queued and is sent once the broker answers)."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pending.put((routing, body, headers, confirmed))
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(confirmed)
        except TimeoutError:
            return False
        return True

    async def _publishing_channel(self) -> Channel:
        channel = self._channel
        if channel is None or channel.is_closed:
            connection = await self._link.get(None)
            channel = self._channel = await open_channel(connection, confirms=True)
        return channel

    async def _publish(
        self, channel: Channel, routing: str, body: bytes, headers: dict[str, str] | None
    ) -> None:
        await channel.basic_publish(
            body,
            exchange=self.exchange,
            routing_key=routing,
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                headers=dict(headers) if headers else None,
            ),
            wait=False,
        )

    async def _drain(self) -> None:
        batch: list[_Message] = []
        delay = BACKOFF_MIN
        while True:
            if not batch:
                batch.append(await self._pending.get())
                while len(batch) < _BATCH and not self._pending.empty():
                    batch.append(self._pending.get_nowait())
            try:
                channel = await self._publishing_channel()
            except FAILED as exc:
                if aborted(exc):
                    raise
                log.warning("%s: %s; retrying", self.target, describe(exc))
                await asyncio.sleep(delay)
                delay = backoff(delay)
                continue
            # The tasks reach the channel's (FIFO) lock in creation order, so the
            # messages go out in order while their confirms are awaited together.
            outcomes = await asyncio.gather(
                *(self._publish(channel, *message[:3]) for message in batch),
                return_exceptions=True,
            )
            errors = [(i, out) for i, out in enumerate(outcomes) if isinstance(out, BaseException)]
            done = errors[0][0] if errors else len(batch)
            for _, _, _, confirmed in batch[:done]:
                self._pending.task_done()
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            batch = batch[done:]
            if errors:
                if cancelled_for_real():
                    raise asyncio.CancelledError
                log.warning("%s: %s; resending", self.target, describe(errors[0][1]))
                await asyncio.sleep(delay)
                delay = backoff(delay)
            else:
                delay = BACKOFF_MIN

    async def aclose(self, grace: float = 5.0) -> None:
        """Publish what is queued (up to `grace` seconds), then disconnect."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._pending.join()
            task.cancel()
            await asyncio.wait([task])
        await self._link.aclose()


class CallbackPublisher(ConfirmedPublisher):
    """Publishes a job's status to the callback exchange (API.md section 7).

    An after-change hook: on enqueue, on every state change and every bizStep
    change of a job with a `callbackRouting`, the status JSON goes to `exchange`
    with that routing key, in the order the changes were made on this node. The
    listener only queues the message (transitions never wait for the broker); a
    background task publishes with confirms, resending after a reconnection, so a
    consumer may see a message twice: the status `version` tells the newest.

    A kind with a callback shape in `shapes` (hook layer: `Hooks.callback_shapes`) gets
    the message its shape makes of the change instead of the status (none when it
    makes None).
    """

    def __init__(
        self,
        url: str,
        exchange: str,
        *,
        expose_tech_info: bool = False,
        buffer: int = 10_000,
        name: str = "asyncproc callbacks",
        shapes: Mapping[str, CallbackShape] | None = None,
    ) -> None:
        super().__init__(url, exchange, buffer=buffer, name=name)
        self.target = f"callback exchange {exchange}"
        self.expose_tech_info = expose_tech_info
        self.shapes: Mapping[str, CallbackShape] = shapes if shapes is not None else {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The publisher of `settings.callback_exchange` at `settings.amqp_url`."""
        return cls(
            settings.amqp_url,
            settings.callback_exchange,
            expose_tech_info=settings.expose_tech_info,
            name=f"asyncproc {settings.key_prefix} callbacks",
        )

    async def _declare(self, connection: AbstractConnection) -> None:
        """The exchange (durable topic), unless it exists."""
        probe = await open_channel(connection, confirms=False)
        try:
            await probe.exchange_declare(self.exchange, passive=True)
        except ChannelNotFoundEntity:
            # The refusal closed the probe channel; declare on a fresh one.
            declarer = await open_channel(connection, confirms=False)
            await declarer.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            await close_channel(declarer)
        else:
            await close_channel(probe)

    async def __call__(self, before: Job | None, after: Job) -> None:
        """The after-change hook: queue the status if the change is one to tell."""
        routing = after.callback_routing
        if routing is None:
            return
        if (
            before is not None
            and before.state == after.state
            and before.progress.biz_step == after.progress.biz_step
        ):
            return  # percent, message or stop flag only
        shape = self.shapes.get(after.kind) if self.shapes else None
        if shape is not None:
            shaped = await shape(before, after)
            if shaped is not None:
                await self._pending.put((routing, shaped, None, None))
            return
        body = _STATUS_ENCODER.encode(after.status(expose_tech_info=self.expose_tech_info))
        await self._pending.put((routing, body, None, None))


class QueuePublisher(ConfirmedPublisher):
    """Publishes JSON messages to one durable queue (declared on start-up), persistent
    and publisher-confirmed, through the default exchange (API.md section 14: the MyLab
    queue message of each new MyLab job)."""

    def __init__(self, url: str, queue: str, *, buffer: int = 10_000, name: str) -> None:
        super().__init__(url, "", buffer=buffer, name=name)
        self.queue = queue
        self.target = f"queue {queue}"

    async def _declare(self, connection: AbstractConnection) -> None:
        channel = await open_channel(connection, confirms=False)
        await channel.queue_declare(self.queue, durable=True)
        await close_channel(channel)

    async def send(self, body: bytes, headers: dict[str, str] | None = None) -> bool:
        """Publish a JSON message (with AMQP `headers`, if any) to the queue: True once
        the broker confirmed it, False when that takes over 5 s (it is sent later)."""
        return await self.post_confirmed(self.queue, body, headers)
