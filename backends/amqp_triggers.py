"""Message triggers over RabbitMQ (API.md section 12): consume, hand over, settle.

Topology (`P` = key_prefix):

    <queue>                   a `queue` trigger's queue: durable, declared if missing
    <exchange>                an `exchange` trigger's exchange: durable topic, declared if missing
    P + "trigger." + name     an exchange trigger's durable queue, bound with `binding_key`
    P + "triggers.dead"       durable queue of the messages that could not become jobs

Each trigger has a channel of its own on one consuming connection, bounded by
`prefetch`, and hands its messages one at a time, in order, to the handler (the
plugin's `Triggers.on_message`). A message is acked only after the handler is done
with it: the job is stored or found to exist. One the handler refuses is first
published to the dead-letter queue (confirmed, persistent, its body, properties and
headers kept, plus `x-asyncproc-reason` and `x-asyncproc-trigger`), then acked, so it
is never dropped and never blocks its queue. While a backend is down the message is
put back (nack with requeue) after a pause. Dead letters go out on a second
connection: RabbitMQ's flow control blocks a publishing connection, and acks must not
wait behind it. Both connections reopen with backoff; consumers re-declare and
consume again on the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self

import anyio
from aiormq import Channel
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from aiormq.exceptions import ChannelNotFoundEntity, PublishError
from pamqp import commands as spec

from asyncproc.config import Settings, TriggerSettings
from asyncproc.errors import BackendUnavailable, Overloaded

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

__all__ = ["DeadHandler", "MessageHandler", "TriggerConsumer"]

log = logging.getLogger("asyncproc.triggers")

# (trigger name, body, AMQP message_id, text headers) -> None (ack) or why it is dead.
MessageHandler = Callable[[str, bytes, str | None, Mapping[str, str]], Awaitable[str | None]]
# The same and the reason: told of a message once it is in the dead-letter queue.
DeadHandler = Callable[[str, bytes, str | None, Mapping[str, str], str], Awaitable[None]]


class TriggerConsumer:
    """Consumes the queues of the message triggers and settles each message."""

    def __init__(
        self,
        url: str,
        triggers: Sequence[TriggerSettings],
        handler: MessageHandler,
        *,
        prefix: str = "asyncproc:",
        on_dead: DeadHandler | None = None,
        prefetch: int = 32,
        retry_pause: float = 1.0,
        outage_timeout: float = 5.0,
    ) -> None:
        self.triggers = [t for t in triggers if t.queue is not None or t.exchange is not None]
        self.handler = handler
        self.on_dead = on_dead
        self.prefix = prefix
        self.prefetch = max(1, prefetch)
        self.retry_pause = retry_pause
        self.outage_timeout = outage_timeout
        self.dead_letter = f"{prefix}triggers.dead"
        self._consume_link = Link(url, f"asyncproc {prefix} triggers")
        self._publish_link = Link(url, f"asyncproc {prefix} triggers dead letters")
        self._dead_channel: Channel | None = None
        self._dead_lock = asyncio.Lock()
        self._ready = {t.name: asyncio.Event() for t in self.triggers}
        self._inboxes: set[asyncio.Queue[DeliveredMessage | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()  # consumers with a message in hand
        self._stopping = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        triggers: Sequence[TriggerSettings],
        handler: MessageHandler,
        *,
        on_dead: DeadHandler | None = None,
    ) -> Self:
        """The consumer of `triggers` at `settings.amqp_url`, names under `key_prefix`."""
        return cls(
            settings.amqp_url, triggers, handler, prefix=settings.key_prefix, on_dead=on_dead
        )

    def queue_name(self, trigger: TriggerSettings) -> str:
        """The queue `trigger` consumes."""
        if trigger.queue is not None:
            return trigger.queue
        return f"{self.prefix}trigger.{trigger.name}"

    # -- running ----------------------------------------------------------------

    def start(self) -> None:
        """Start one consuming task per trigger (they connect and reconnect by themselves)."""
        for trigger in self.triggers:
            self._tasks.append(
                asyncio.create_task(self._consume(trigger), name=f"amqp trigger {trigger.name}")
            )

    async def wait_ready(self, within: float) -> bool:
        """True once every trigger consumes, False if not within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                for ready in self._ready.values():
                    await ready.wait()
        except TimeoutError:
            return False
        return True

    @asynccontextmanager
    async def running(self, ready_within: float = 5.0) -> AsyncIterator[Self]:
        """Consuming for the duration of the block.

        Entering waits up to `ready_within` s for every trigger to consume; a broker
        that is away does not stop the node: the triggers start once it is back.
        """
        self.start()
        try:
            if not await self.wait_ready(ready_within):
                log.warning(
                    "message triggers are not consuming yet (%s); they start once RabbitMQ answers",
                    self._consume_link.last_error,
                )
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop consuming: the message in hand is finished (up to `grace` s), the ones
        prefetched go back to their queues."""
        self._stopping = True
        for inbox in self._inboxes:
            inbox.put_nowait(None)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task not in self._busy:
                task.cancel()  # idle, connecting or backing off: nothing to finish
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self._consume_link.aclose()
        await self._publish_link.aclose()

    # -- consuming ----------------------------------------------------------------

    async def _consume(self, trigger: TriggerSettings) -> None:
        delay = BACKOFF_MIN
        queue = self.queue_name(trigger)
        while not self._stopping:
            channel: AbstractChannel | None = None
            inbox: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()
            try:
                connection = await self._consume_link.get(None)
                await self._declare(connection, trigger)
                channel = await open_channel(connection, confirms=False)
                self._inboxes.add(inbox)
                _wake_when_gone(channel, inbox)
                await channel.basic_qos(prefetch_count=self.prefetch)

                await channel.basic_consume(queue, _deliver_to(inbox))
                self._ready[trigger.name].set()
                delay = BACKOFF_MIN
                while not self._stopping and (message := await inbox.get()) is not None:
                    if not message.channel.is_closed:  # else it is back in its queue
                        await self._handle(trigger, message)
                if not self._stopping:
                    log.warning("trigger %s: consumer channel lost; consuming again", trigger.name)
            except FAILED as exc:
                if aborted(exc):
                    raise
                log.warning("trigger %s: %s; retrying", trigger.name, describe(exc))
                await asyncio.sleep(delay)
                delay = backoff(delay)
            finally:
                self._inboxes.discard(inbox)
                if channel is not None and not channel.is_closed and not cancelled_for_real():
                    await close_channel(channel)

    async def _declare(self, connection: AbstractConnection, trigger: TriggerSettings) -> None:
        """Declare what `trigger` consumes (kept as it is when it exists) and the dead letters."""
        await _ensure(connection, "queue", self.dead_letter)
        queue = self.queue_name(trigger)
        await _ensure(connection, "queue", queue)
        if trigger.exchange is not None:
            await _ensure(connection, "exchange", trigger.exchange)
            channel = await open_channel(connection, confirms=False)
            await channel.queue_bind(queue, trigger.exchange, routing_key=trigger.binding_key or "")
            await close_channel(channel)

    async def _handle(self, trigger: TriggerSettings, message: DeliveredMessage) -> None:
        deliver = message.delivery
        assert isinstance(deliver, spec.Basic.Deliver)
        tag = deliver.delivery_tag or 0
        channel = message.channel
        properties = message.header.properties
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)
        try:
            try:
                reason = await self.handler(
                    trigger.name,
                    message.body,
                    properties.message_id or None,
                    _text(properties.headers),
                )
            except (BackendUnavailable, Overloaded):
                raise
            except Exception as exc:  # a bug must not block the queue
                log.exception("trigger %s: the handler failed", trigger.name)
                reason = f"internal error: {describe(exc)}"
            if reason is not None:
                await self._dead(trigger, message, reason)
                if self.on_dead is not None:
                    # After the broker holds it: a mirror that fails puts the message
                    # back, and it comes again (never lost, at worst twice in the queue).
                    await self.on_dead(
                        trigger.name,
                        message.body,
                        properties.message_id or None,
                        _text(properties.headers),
                        reason,
                    )
        except (BackendUnavailable, Overloaded) as exc:
            # Not the message's fault: it goes back, and comes again after the pause.
            log.warning("trigger %s: %s; the message goes back to its queue", trigger.name, exc)
            await asyncio.sleep(self.retry_pause)
            await _quietly(channel.basic_nack(tag, requeue=True, wait=False))
            return
        finally:
            self._busy.discard(task)
        await _quietly(channel.basic_ack(tag, wait=False))

    # -- dead letters -----------------------------------------------------------

    async def _dead(self, trigger: TriggerSettings, message: DeliveredMessage, reason: str) -> None:
        """Publish `message` to the dead-letter queue and wait for the broker's confirm;
        `BackendUnavailable` when that does not happen within `outage_timeout`."""
        log.warning("trigger %s: message dead-lettered: %s", trigger.name, reason)
        original = message.header.properties
        headers: dict[str, Any] = dict(original.headers or {})
        headers["x-asyncproc-reason"] = reason
        headers["x-asyncproc-trigger"] = trigger.name
        properties = spec.Basic.Properties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=2,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            message_type=original.message_type,
            app_id=original.app_id,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_timeout
        while True:
            try:
                channel = await self._dead_letter_channel(deadline)
                async with asyncio.timeout_at(deadline):
                    confirm = await channel.basic_publish(
                        message.body,
                        routing_key=self.dead_letter,
                        properties=properties,
                        mandatory=True,  # an unroutable one comes back instead of vanishing
                    )
                if isinstance(confirm, spec.Basic.Ack):
                    return
                error: BaseException = BackendUnavailable("rabbitmq", "the broker nacked it")
            except PublishError as exc:
                self._dead_channel = None  # the queue was deleted: declare it again
                error = exc
            except FAILED as exc:
                if aborted(exc):
                    raise
                error = exc
            if loop.time() >= deadline:
                raise BackendUnavailable("rabbitmq", f"dead letter not stored: {describe(error)}")
            await asyncio.sleep(0.05)

    async def _dead_letter_channel(self, deadline: float) -> Channel:
        """The confirming channel of dead letters, the queue declared on it."""
        channel = self._dead_channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._dead_lock:
            channel = self._dead_channel
            if channel is None or channel.is_closed:
                remaining = deadline - asyncio.get_running_loop().time()
                connection = await self._publish_link.get(max(0.0, remaining))
                await _ensure(connection, "queue", self.dead_letter)
                channel = self._dead_channel = await open_channel(connection, confirms=True)
            return channel


def _deliver_to(
    inbox: asyncio.Queue[DeliveredMessage | None],
) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
    """The consume callback: the message goes to `inbox` (aiormq calls it in a task of
    its own per message; the tasks start in delivery order, so the inbox keeps it)."""

    async def arrived(message: DeliveredMessage) -> None:
        inbox.put_nowait(message)

    return arrived


def _wake_when_gone(
    channel: AbstractChannel, inbox: asyncio.Queue[DeliveredMessage | None]
) -> None:
    """Put None in `inbox` when the channel closes or the broker cancels the consumer
    (it does when the queue is deleted)."""

    def closed(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: the link logs why the connection went
        inbox.put_nowait(None)

    channel.closing.add_done_callback(closed)
    channel.on_consumer_cancel_callbacks.add(lambda _tag: inbox.put_nowait(None))


async def _ensure(connection: AbstractConnection, what: str, name: str) -> None:
    """Declare the durable queue or topic exchange `name` unless it exists.

    A passive declare first: an existing queue or exchange keeps its own type and
    arguments (a declare with others would be refused).
    """
    probe = await open_channel(connection, confirms=False)
    try:
        if what == "queue":
            await probe.queue_declare(name, passive=True)
        else:
            await probe.exchange_declare(name, passive=True)
    except ChannelNotFoundEntity:
        # The refusal closed the probe channel; declare on a fresh one.
        declarer = await open_channel(connection, confirms=False)
        if what == "queue":
            await declarer.queue_declare(name, durable=True)
        else:
            await declarer.exchange_declare(name, exchange_type="topic", durable=True)
        await close_channel(declarer)
    else:
        await close_channel(probe)


def _text(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The message headers with a plain value, as text (what a job's `headers` holds)."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if isinstance(value, bytes):
            out[name.lower()] = value.decode("utf-8", "replace")
        elif isinstance(value, str | int | float | bool):
            out[name.lower()] = str(value)
    return out


async def _quietly(settle: Awaitable[None]) -> None:
    """Await an ack or nack; a channel that died meanwhile is no error (the broker
    delivers the message again, and its requestId keeps it from starting twice)."""
    try:
        await settle
    except FAILED as exc:
        if aborted(exc):
            raise
