"""External processors (API.md section 14): jobs of external kinds, taken over HTTP.

A processor takes jobs (`ExternalJobs.take`): the node it calls takes their messages
from the queue for it, moves each job to `running` under a lease and hands over a
token. With the token the processor reports progress (renewing the lease and hearing
of stop requests), then ends the job with a result, a failure or a confirmed stop.

The token names the attempt it was given for (the fencing every lifecycle event of a
running attempt carries) and is signed with the cluster's secret, so any node checks it
without a lookup. A token whose lease lapsed, or whose attempt is no longer the job's,
is refused with `LeaseLost` and changes nothing; when a lease lapses the sweep takes the
job back (a stop-requested one becomes `stopped`) exactly as for a node that died.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated

import anyio
import msgspec

from .errors import InvalidInput, JobNotFound, LeaseLost, NotStopping, TransitionRefused
from .interfaces import Delivery, StateStore
from .lifecycle import Event, Fail, Report, Retry, Start, Stopped, Succeed
from .model import ErrorInfo, Job, JobState, JobStatus, utcnow
from .rules import retries_left
from .service import LOST_ERROR, JobService, external_routing

__all__ = [
    "ExternalJobs",
    "FailReport",
    "ProgressAnswer",
    "ProgressReport",
    "StoppedReport",
    "TakeAnswer",
    "TakeRequest",
    "Taken",
    "cluster_secret",
    "make_token",
    "token_attempt",
]

log = logging.getLogger("asyncproc.external")

KindName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=10_000)]
SECRET_SPACE = "external"
SECRET_NAME = "token-secret"


class TakeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/workers/take`: the kinds a processor runs, its name, how many jobs it
    takes at most and how long it waits for the first one."""

    kinds: Annotated[list[KindName], msgspec.Meta(min_length=1, max_length=50)]
    worker: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    wait: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class Taken(msgspec.Struct, frozen=True, rename="camel"):
    """One job handed to a processor: its status, input, the enqueue's headers and
    arrival time, the token of this attempt and when its lease lapses."""

    job: JobStatus
    content: msgspec.Raw
    headers: dict[str, str]
    incoming_at: datetime | None
    token: str
    lease_until: datetime


class TakeAnswer(msgspec.Struct, frozen=True):
    """The answer of `take`: the jobs taken, `[]` when none came in time."""

    items: list[Taken]


class ProgressReport(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """`POST /api/workers/jobs/{id}/progress`; an empty report is a heartbeat."""

    token: Token
    percent: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    biz_step: Text | None = None
    message: Text | None = None


class ProgressAnswer(msgspec.Struct, frozen=True, rename="camel"):
    """Whether the job is asked to stop, and the lease's new end."""

    stop_requested: bool
    lease_until: datetime


class ErrorReport(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """What went wrong, in the fields of a job's `error`."""

    error_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    biz_msg: Text | None = None
    tech_msg: Text | None = None
    tech_info: Annotated[str, msgspec.Meta(max_length=200_000)] | None = None


class FailReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/workers/jobs/{id}/fail`: the error, and whether it may be retried."""

    token: Token
    error: ErrorReport = ErrorReport()
    retryable: bool = False


class StoppedReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/workers/jobs/{id}/stopped`: the processor stopped as asked."""

    token: Token


def make_token(secret: bytes, job_id: str, attempt: int) -> str:
    """The token of `job_id`'s attempt `attempt`: the attempt and its signature."""
    tag = hmac.new(secret, f"{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()[:32]
    return f"{attempt}.{tag}"


def token_attempt(secret: bytes, job_id: str, token: str) -> int | None:
    """The attempt a token of `job_id` was given for, or None when it is not one."""
    number, _, _ = token.partition(".")
    # ASCII digits only (`"²".isdigit()` is true), and bytes compared: compare_digest
    # refuses a str with other characters (a 500 for a garbled token).
    if not (number.isascii() and number.isdigit()) or len(number) > 9:
        return None
    attempt = int(number)
    if not hmac.compare_digest(make_token(secret, job_id, attempt).encode(), token.encode()):
        return None
    return attempt


async def cluster_secret(store: StateStore) -> bytes:
    """The secret every node signs tokens with: made by the first node, kept in the store."""
    doc = await store.get_doc(SECRET_SPACE, SECRET_NAME)
    if doc is None:
        await store.put_doc(SECRET_SPACE, SECRET_NAME, secrets.token_bytes(32), expected=0)
        doc = await store.get_doc(SECRET_SPACE, SECRET_NAME)  # whoever's write won
        assert doc is not None
    return doc.data


class ExternalJobs:
    """The calls of external processors, on top of the node's JobService."""

    def __init__(
        self,
        service: JobService,
        *,
        lease: float,
        secret: bytes | Callable[[], Awaitable[bytes]],
    ) -> None:
        self.service = service
        self.lease = lease
        # The cluster's secret, or how to get it (from the store, on first use: a node
        # starts while the store is away, and answers 503 until it is back).
        self._secret = secret if isinstance(secret, bytes) else None
        self._get_secret = None if isinstance(secret, bytes) else secret

    async def secret(self) -> bytes:
        """The secret tokens are signed with."""
        if self._secret is None:
            assert self._get_secret is not None
            self._secret = await self._get_secret()
        return self._secret

    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease)

    # -- taking ---------------------------------------------------------------

    async def take(self, request: TakeRequest) -> list[Taken]:
        """Up to `request.max` jobs of `request.kinds`, started for `request.worker`;
        waits up to `request.wait` seconds for the first."""
        secret = await self.secret()  # before any job starts: a token is owed for each
        registry = self.service.registry
        routings: list[str] = []
        for name in dict.fromkeys(request.kinds):
            kind = registry.get(name)
            if not kind.external:
                raise InvalidInput(f"kinds: {name!r} is not an external kind")
            routings.append(external_routing(name))
        taken: list[Taken] = []
        deadline = anyio.current_time() + request.wait
        while True:
            wait = max(0.0, deadline - anyio.current_time())
            deliveries = await self.service.queue.take(routings, request.max - len(taken), wait)
            for delivery in deliveries:
                item = await self._settle(delivery, request.worker, secret)
                if item is not None:
                    taken.append(item)
            # Messages of jobs that could not start (stopped, finished, not yet due)
            # do not end the wait: the processor asked for work.
            if taken or not deliveries or anyio.current_time() >= deadline:
                return taken

    async def _settle(self, delivery: Delivery, worker: str, secret: bytes) -> Taken | None:
        """Start the delivery's job for `worker` and ack the message (the lease guards the
        job from now on); None when it has nothing to start."""
        with anyio.CancelScope(shield=True):
            try:
                job = await self._start(delivery)
                until = self._lease_until()
                if job is not None:
                    await self.service.store.hold_lease([job.id], until)
            except BaseException:
                await delivery.requeue()
                raise
            await delivery.ack()
        if job is None:
            return None
        log.info("job %s (%s) taken by %s, attempt %d", job.id, job.kind, worker, job.attempt)
        return Taken(
            job=job.status(expose_tech_info=self.service.expose_tech_info),
            content=job.content,
            headers=job.headers,
            incoming_at=job.incoming_at,
            token=make_token(secret, job.id, job.attempt),
            lease_until=until,
        )

    async def _start(self, delivery: Delivery) -> Job | None:
        """The job moved to running, or None (the message is spare or early)."""
        service = self.service
        try:
            started = await service.transition(delivery.job_id, Start())
            return started if started.state is JobState.RUNNING else None
        except JobNotFound:
            log.warning("dropped the message of job %s: it has no record", delivery.job_id)
            return None
        except TransitionRefused as refused:
            job = refused.job
        if await service.put_back_early(job):
            return None
        start = Start()
        if job.state is JobState.QUEUED and job.after is not None:
            holder = await service.store.get(job.after)
            if holder is not None and not holder.state.terminal:
                # It replaced its key's holder, which still runs: ask again in a moment.
                await service.queue.publish(job.id, service.routing_of(job), delay=1.0)
                return None
            start = Start(after_ended=True)
        elif job.state is JobState.RUNNING and delivery.redelivered:
            lease = await service.store.lease_of(job.id)
            if lease is not None and lease >= utcnow():
                return None  # its processor holds it
            # Taken by a node that died before it answered: nobody got the token.
            await service.transition(job.id, Retry(LOST_ERROR, attempt=job.attempt))
        elif job.state is not JobState.QUEUED:
            return None
        try:
            started = await service.transition(job.id, start)
        except TransitionRefused:
            return None
        return started if started.state is JobState.RUNNING else None

    # -- reports --------------------------------------------------------------

    async def _leased(self, job_id: str, token: str) -> int:
        """The attempt `token` stands for while its lease holds; else `LeaseLost`."""
        attempt = token_attempt(await self.secret(), job_id, token)
        if attempt is None:
            raise LeaseLost(f"the token is not one of job {job_id!r}", jobId=job_id)
        lease = await self.service.store.lease_of(job_id)
        if lease is None or lease < utcnow():
            raise LeaseLost(f"the lease of job {job_id!r} lapsed", jobId=job_id)
        return attempt

    async def _apply(
        self, job_id: str, attempt: int, event: Event, result: bytes | None = None
    ) -> Job:
        try:
            return await self.service.transition(job_id, event, result=result)
        except TransitionRefused as refused:
            raise self._refusal(refused.job, attempt) from None
        except JobNotFound:
            raise LeaseLost(f"job {job_id!r} is gone", jobId=job_id) from None

    @staticmethod
    def _refusal(job: Job, attempt: int) -> LeaseLost | NotStopping:
        if job.state is JobState.RUNNING and job.attempt == attempt:
            return NotStopping(f"job {job.id!r} was not asked to stop", jobId=job.id)
        return LeaseLost(f"job {job.id!r} moved on without this attempt", jobId=job.id)

    async def progress(self, job_id: str, report: ProgressReport) -> ProgressAnswer:
        """Store a progress report (or a heartbeat) and renew the lease."""
        attempt = await self._leased(job_id, report.token)
        event = Report(report.percent, report.biz_step, report.message, attempt)
        job = await self._apply(job_id, attempt, event)
        until = self._lease_until()
        await self.service.store.hold_lease([job_id], until)
        return ProgressAnswer(stop_requested=job.stop_requested, lease_until=until)

    async def succeed(self, job_id: str, token: str, data: bytes, mime: str | None) -> Job:
        """The job succeeded with `data` of type `mime` (no result when both are empty)."""
        attempt = await self._leased(job_id, token)
        if data or mime:
            event = Succeed(len(data), mime or "application/octet-stream", attempt)
            job = await self._apply(job_id, attempt, event, result=data)
        else:
            job = await self._apply(job_id, attempt, Succeed(attempt=attempt))
        await self._done(job)
        return job

    async def fail(self, job_id: str, report: FailReport) -> Job:
        """The job failed: queued again after a backoff when retryable and its kind's
        retries last, else failed for good."""
        attempt = await self._leased(job_id, report.token)
        sent = report.error
        error = ErrorInfo(
            error_id=sent.error_id or ("retryable" if report.retryable else "failed"),
            biz_msg=sent.biz_msg,
            tech_msg=sent.tech_msg,
            tech_info=sent.tech_info,
        )
        job = await self.service.get(job_id)
        if job.state is not JobState.RUNNING or job.attempt != attempt:
            raise self._refusal(job, attempt)
        kind = self.service.registry.get(job.kind)
        try:
            if report.retryable and retries_left(job, kind.retries):
                ended = await self.service.retry_later(job, kind, error)
            else:
                ended = await self.service.fail_for_good(job, Fail(error, attempt))
        except TransitionRefused as refused:
            raise self._refusal(refused.job, attempt) from None
        await self._done(ended)
        return ended

    async def stopped(self, job_id: str, token: str) -> Job:
        """The processor stopped the job after a stop request."""
        attempt = await self._leased(job_id, token)
        job = await self._apply(job_id, attempt, Stopped(attempt))
        await self._done(job)
        return job

    async def _done(self, job: Job) -> None:
        await self.service.store.drop_lease(job.id)
        log.info("job %s (%s) %s by its processor", job.id, job.kind, job.state)
