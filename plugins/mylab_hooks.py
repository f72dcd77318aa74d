"""The hooks of plugin `mylab` (MyLab.AsyncProcessor API v2, API.md section 14) for
jobs of `mylab_kind`: MyLab's callback message shape, MyLab's queue message of each new
job, a stop that needs no processor's confirmation, and the drain of spare messages."""

from __future__ import annotations

import logging
from typing import Protocol

import anyio
import msgspec

from asyncproc.errors import BackendUnavailable, TransitionRefused
from asyncproc.lifecycle import Stopped
from asyncproc.model import Job, JobState
from asyncproc.service import JobService, external_routing

from .mylab_model import QueueMessage, callback_message

__all__ = [
    "DRAIN_EVERY",
    "CallbackShape",
    "LeaselessStopper",
    "MessageSink",
    "NewJobTeller",
    "drain_spare_messages",
]

log = logging.getLogger("asyncproc.mylab")

_encoder = msgspec.json.Encoder()


class CallbackShape:
    """MyLab's callback message of a change to a MyLab job (with its result, read from
    the store, when it completes with one)."""

    def __init__(self, service: JobService, *, expose_tech_info: bool) -> None:
        self.service = service
        self.expose_tech_info = expose_tech_info

    async def __call__(self, before: Job | None, after: Job) -> bytes | None:
        """The message body, or None when MyLab tells nothing of this change."""
        result = None
        if after.state is JobState.SUCCEEDED and after.result_size is not None:
            result = await self.service.store.get_result(after.id)
        message = callback_message(before, after, result, expose_tech_info=self.expose_tech_info)
        return _encoder.encode(message) if message is not None else None


class MessageSink(Protocol):
    """Where MyLab's queue messages go (`asyncproc.backends.callbacks.QueuePublisher`)."""

    async def send(self, body: bytes, headers: dict[str, str] | None = None) -> bool:
        """Publish a JSON message (with AMQP `headers`, if any): True once the broker
        confirmed it, False when it is still on its way."""


class NewJobTeller:
    """After-change hook: MyLab's queue message `{"id", "content"}` of each new MyLab
    job goes to `mylab_queue`, for MyLab processors, with the headers the job keeps
    (those of the request that created it) as the message's headers."""

    states = frozenset({JobState.QUEUED})

    def __init__(self, kind: str, publisher: MessageSink) -> None:
        self.kind = kind
        self.publisher = publisher

    async def __call__(self, before: Job | None, after: Job) -> None:
        """Queue the message of a job just created."""
        if before is None and after.kind == self.kind:
            body = _encoder.encode(QueueMessage(after.id, after.content))
            # The headers of the request that created it, as MyLab's server passes them on.
            # Confirmed before the enqueue answers, unless the broker is slow or away.
            if not await self.publisher.send(body, after.headers or None):
                log.warning("mylab: the queue message of job %s is not confirmed yet", after.id)


class LeaselessStopper:
    """After-change hook: a stop requested on a running MyLab job that no lease holder
    runs (a MyLab processor started it) stops it at once; the processor's next call
    answers `409`."""

    states = frozenset({JobState.RUNNING})

    def __init__(self, kind: str, service: JobService) -> None:
        self.kind = kind
        self.service = service

    async def __call__(self, before: Job | None, after: Job) -> None:
        """Stop the job if the change is its stop request."""
        if (
            after.kind != self.kind
            or not after.stop_requested
            or before is None
            or before.stop_requested
        ):
            return
        if await self.service.store.lease_of(after.id) is not None:
            return  # a processor with a lease confirms the stop itself
        try:
            await self.service.transition(after.id, Stopped())
        except TransitionRefused:
            pass  # it finished meanwhile


# How long the spare-message drain waits for messages, and pauses when the oldest one
# is a job still pending with the MyLab processors.
DRAIN_EVERY = 1.0


async def drain_spare_messages(service: JobService, kind: str) -> None:
    """Ack the spare messages on the external kind's queue routing (`ext.<kind>`).

    Every job of an external kind also has a message there (for processors that take
    jobs over `/api/workers/take`). A MyLab processor starts its job from MyLab's
    queue message instead, which leaves that message spare: this drain acks the
    messages of jobs no longer queued, oldest first, so they never pile up (nor count
    in `max_queue_depth`). It stops at the first job still queued (puts it back, and
    looks again after a pause): its message is the job's while it waits.
    """
    routing = external_routing(kind)
    while True:
        try:
            waiting = await _drain_once(service, routing)
        except BackendUnavailable:
            waiting = True
        except Exception:  # a background loop must outlive a surprise; log it
            log.exception("mylab: draining %s failed", routing)
            waiting = True
        if waiting:
            await anyio.sleep(DRAIN_EVERY)


async def _drain_once(service: JobService, routing: str) -> bool:
    """One round of the drain; True when it stopped at a job still queued."""
    deliveries = await service.queue.take([routing], 32, DRAIN_EVERY)
    waiting = False
    for delivery in deliveries:
        with anyio.CancelScope(shield=True):
            if waiting:
                await delivery.requeue()
                continue
            try:
                job = await service.store.get(delivery.job_id)
            except BackendUnavailable:
                job, waiting = None, True
                await delivery.requeue()
                continue
            if job is not None and job.state is JobState.QUEUED:
                waiting = True
                await delivery.requeue()
            else:
                await delivery.ack()
    return waiting
