"""Enqueue, progress, stop, result and list: the logic the API and the worker share.

`JobService` is the one door to the StateStore for changes: every transition goes
through `JobService.transition`, which also runs the after-change hooks (the
callback exchange, ...) with the record before and after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated

import anyio
import msgspec

from .errors import (
    BackendUnavailable,
    InvalidInput,
    JobNotFound,
    JobStateConflict,
    KeyConflict,
    Overloaded,
    RequestIdConflict,
    ServiceError,
    TransitionRefused,
)
from .hooks import Draft
from .input_limits import ALWAYS_HIDDEN_HEADERS
from .interfaces import JobQuery, Page, Queue, StateStore
from .lifecycle import TIMEOUT_ERROR, Event, Fail, RequestStop, Retry, Stopped, TimeOut
from .model import (
    API_TRIGGER,
    ErrorInfo,
    Job,
    JobState,
    OnConflict,
    Trigger,
    TriggerType,
    Uniqueness,
    utcnow,
)
from .registry import Compensation, JobKind, Registry
from .rules import retry_backoff

__all__ = ["EnqueueRequest", "ItemOutcome", "JobService"]

RequestId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
BusinessKey = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
RoutingName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
CallbackRouting = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]

# The longest start delay (100 years), and the last year a start may be in: past them,
# a job's deadline or purge time could overflow a date. (The year is one the document
# can say: a pattern on the date; a time relative to now it could not.)
MAX_DELAY = 100 * 365.25 * 86400
LAST_YEAR = 8999

# The repair sweep: how often it looks, and how long a ready job may wait unstarted
# in an empty queue before its message counts as lost.
REPAIR_EVERY = timedelta(seconds=30)
REPAIR_AFTER = timedelta(seconds=30)

log = logging.getLogger("asyncproc")
# Items of one batch being enqueued at once (`enqueue_many`): 16, 32 and 64 gave
# 7,300-7,700, 9,000-9,600 and 6,600-7,000 jobs/s over HTTP (`bench/batch.py --http`).
_BATCH_SENDERS = 32

LOST_ERROR = ErrorInfo(error_id="lost", tech_msg="the worker running this job was lost")


def dead_letter_error(job: Job) -> ErrorInfo:
    """The error of a job lost too often: it fails with `dead_letter`."""
    return ErrorInfo(
        error_id="dead_letter",
        biz_msg="The job could not be run.",
        tech_msg=f"delivered {job.attempt} times without finishing",
    )


def compensation_id(job_id: str) -> str:
    """The id of the job compensating `job_id` (the same however often it is asked)."""
    return "comp-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def external_routing(kind: str) -> str:
    """The queue routing on which an external kind's jobs wait for processors."""
    return f"ext.{kind}"


def new_job_id() -> str:
    """A random UUID4 as 32 lowercase hex digits (what `uuid.uuid4().hex` gives, faster)."""
    global _random_offset, _random_bytes
    with _random_lock:
        if _random_offset >= len(_random_bytes):
            # One getrandom() system call per 256 ids: per id, it cost a tenth of a job.
            _random_bytes, _random_offset = os.urandom(4096), 0
        bits = int.from_bytes(_random_bytes[_random_offset : _random_offset + 16], "big")
        _random_offset += 16
    # The version (4) and variant (RFC 4122) bits, as `uuid.UUID(version=4)` sets them.
    bits = (bits & _UUID_CLEAR) | _UUID_SET
    return f"{bits:032x}"


def _forget_random_bytes() -> None:
    global _random_offset, _random_bytes
    _random_bytes, _random_offset = b"", 0


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)
_random_lock = threading.Lock()
_random_bytes = b""
_random_offset = 0
# A forked child must not hand out the ids its parent still holds in the buffer.
os.register_at_fork(after_in_child=_forget_random_bytes)


class EnqueueRequest(msgspec.Struct, frozen=True, rename="camel"):
    """The body of `POST /api/{kind}/enqueue`."""

    content: msgspec.Raw
    request_id: RequestId | None = None
    key: BusinessKey | None = None
    proc_routing: RoutingName | None = None
    callback_routing: CallbackRouting | None = None
    on_conflict: OnConflict | None = None
    delay: Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY)] | None = None
    not_before: (
        Annotated[
            datetime,
            msgspec.Meta(
                tz=True,
                description="Before the year 9000",
                extra_json_schema={"pattern": f"^[0-{LAST_YEAR // 1000}]"},
            ),
        ]
        | None
    ) = None

    def start_at(self, now: datetime) -> datetime | None:
        """When the job may start (`delay` or `notBefore`), None for at once; 422 for both,
        or for a `notBefore` past `LAST_YEAR` (a deadline or purge time after it could
        overflow a date)."""
        if self.delay is not None and self.not_before is not None:
            raise InvalidInput("give delay or notBefore, not both")
        if self.delay:
            return now + timedelta(seconds=self.delay)
        if self.not_before is not None and self.not_before.year > LAST_YEAR:
            raise InvalidInput(f"notBefore: must be before the year {LAST_YEAR + 1}")
        if self.not_before is not None and self.not_before > now:
            return self.not_before
        return None


# What the document says of an enqueue body beyond its fields' types.
ENQUEUE_RULES = {
    "not": {
        "required": ["delay", "notBefore"],
        "properties": {"delay": {"type": "number"}, "notBefore": {"type": "string"}},
    },
    "description": "`delay` and `notBefore` together answer 422.",
}


class ItemOutcome(msgspec.Struct, frozen=True):
    """What became of one item of a batch: `created`, `existing` or `refused` (with the
    error body's inner object a single enqueue would have answered)."""

    outcome: str
    job: Job | None = None
    error: dict[str, object] | None = None


class JobService:
    """The operations of API.md on top of a StateStore, a Queue and a Registry."""

    def __init__(
        self,
        *,
        registry: Registry,
        store: StateStore,
        queue: Queue,
        processing_timeout: float,
        retention: float,
        expose_tech_info: bool = False,
        max_queue_depth: int = 0,
        max_deliveries: int = 5,
        hidden_headers: frozenset[str] = ALWAYS_HIDDEN_HEADERS,
    ) -> None:
        self.registry = registry
        self.store = store
        self.queue = queue
        self.processing_timeout = processing_timeout
        self.retention = retention
        self.expose_tech_info = expose_tech_info
        self.max_queue_depth = max_queue_depth
        self.max_deliveries = max_deliveries
        # Lower-case names never kept for a handler, whoever passes the headers in.
        self.hidden_headers = hidden_headers
        # Jobs this node took back after a lapsed lease -> (when, publishes): published
        # again while they stay queued, as the message may have gone to the frozen node.
        self._taken_back: dict[str, tuple[datetime, int]] = {}
        self._next_repair = utcnow() + REPAIR_EVERY
        self.hooks = registry.hooks
        self._external = frozenset(kind.name for kind in registry if kind.external)

    def routing_of(self, job: Job) -> str:
        """The queue routing of `job`'s messages: its `procRouting`, except that an
        external kind's jobs wait on `ext.<kind>` for the processors that take them."""
        if job.kind in self._external:
            return external_routing(job.kind)
        return job.proc_routing

    # -- changes --------------------------------------------------------------

    async def transition(
        self, job_id: str, event: Event, *, result: bytes | None = None, by_runner: bool = False
    ) -> Job:
        """Apply `event` through the store and run the after-change hooks (`by_runner`:
        the node running the job ends its own attempt, see `StateStore.change`)."""
        before, after = await self.store.change(job_id, event, result=result, by_runner=by_runner)
        hooks = self.hooks
        if after is not before and hooks.after_change and hooks.watches(after):
            await hooks.emit_after_change(before, after)
        return after

    # -- the four calls -------------------------------------------------------

    async def enqueue(
        self,
        kind_name: str,
        request: EnqueueRequest,
        *,
        headers: Mapping[str, str] | None = None,
        incoming_at: datetime | None = None,
        trigger: Trigger = API_TRIGGER,
        parent_id: str | None = None,
        check_depth: bool = True,
        after: str | None = None,
        publish: bool = True,
        owner: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate, store and queue a job; `(job, False)` when a job answers for it
        (its `requestId` exists, or the key's holder under `onConflict: existing`).
        With `after` (a job id), the job does not start before that job is terminal;
        with `publish=False` the caller queues it (`publish`) once it is ready to;
        `owner` is the job's owner when it inherits one (a job that started it)."""
        kind = self.registry.get(kind_name)
        kind.decode_content(request.content)
        routing = (
            external_routing(kind.name) if kind.external else request.proc_routing or "default"
        )
        if check_depth:
            await self._check_depth(routing)
        now = utcnow()
        start_at = request.start_at(now) if request.delay or request.not_before else None
        job = Job(
            id=request.request_id or new_job_id(),
            kind=kind.name,
            state=JobState.QUEUED,
            created_at=now,
            deadline=(start_at or now)
            + timedelta(seconds=kind.processing_timeout or self.processing_timeout),
            not_before=start_at,
            retention=kind.retention if kind.retention is not None else self.retention,
            key=request.key,
            proc_routing=request.proc_routing or "default",
            callback_routing=request.callback_routing,
            content=request.content,
            headers={
                k.lower(): v
                for k, v in (headers or {}).items()
                if k.lower() not in self.hidden_headers
            },
            incoming_at=incoming_at or now,
            trigger=trigger,
            parent_id=parent_id,
            after=after,
            owner=owner,
        )
        on_conflict = request.on_conflict or kind.on_conflict
        if self.hooks.before_enqueue or kind.name in self.hooks.before_enqueue_of:
            draft = Draft(kind, job, on_conflict)
            await self.hooks.emit_before_enqueue(draft)
            job, on_conflict = draft.job, draft.on_conflict
        if (
            on_conflict is OnConflict.REPLACE
            and self.hooks.visibility
            and job.key is not None
            and kind.uniqueness is not Uniqueness.NONE
        ):
            # A caller may not stop, by replacing it, a job it cannot see.
            holder = await self.store.key_holder(kind.name, job.key)
            if holder is not None and not self.hooks.visible(holder):
                on_conflict = OnConflict.REJECT
        outcome = await self.store.insert(job, uniqueness=kind.uniqueness, on_conflict=on_conflict)
        stored = outcome.job
        if not outcome.created:
            if self.hooks.visibility and not self.hooks.visible(stored):
                # Taken by a job the caller cannot see: a conflict that shows nothing of it.
                if stored.id == job.id:
                    raise RequestIdConflict(f"requestId {job.id!r} is taken")
                raise KeyConflict(f"key {job.key!r} of {kind.name} is held", jobId=stored.id)
            if stored.kind != kind.name:
                raise RequestIdConflict(
                    f"requestId {job.id!r} names a job of kind {stored.kind}", jobId=stored.id
                )
            return stored, False
        # Before publishing: once published, a worker may start the job, and the
        # hooks must hear `queued` before `running`.
        hooks = self.hooks
        if hooks.after_change:
            if outcome.replaced is not None and hooks.watches(outcome.replaced[1]):
                await hooks.emit_after_change(*outcome.replaced)
            if hooks.watches(stored):
                await hooks.emit_after_change(None, stored)
        if publish:
            if stored.not_before is None:  # the common case, without `publish`'s layer
                try:
                    await self.queue.publish(stored.id, routing, hint=self.store.hint(stored))
                except BackendUnavailable:
                    with contextlib.suppress(BackendUnavailable):
                        await self.store.forget(stored)
                    raise
            else:
                await self.publish(stored)
        return stored, True

    async def publish(self, job: Job) -> None:
        """Queue a stored job's message (delayed to its `notBefore`); when the queue
        cannot take it, forget the record, so that nothing is kept and the same request
        can simply be sent again (API.md section 1, 503)."""
        delay = 0.0
        if job.not_before is not None:
            delay = max(0.0, (job.not_before - utcnow()).total_seconds())
        routing = self.routing_of(job)
        try:
            if delay > 0:
                await self.queue.publish(job.id, routing, delay=delay)
            else:
                await self.queue.publish(job.id, routing)
        except BackendUnavailable:
            with contextlib.suppress(BackendUnavailable):
                await self.store.forget(job)
            raise

    async def _check_depth(self, routing: str) -> None:
        if self.max_queue_depth and await self.queue.depth(routing) >= self.max_queue_depth:
            raise Overloaded(f"queue {routing!r} is full, try again later", retryAfter=1)

    async def enqueue_many(
        self,
        kind_name: str,
        requests: Sequence[EnqueueRequest | ServiceError],
        *,
        headers: Mapping[str, str] | None = None,
        incoming_at: datetime | None = None,
        trigger: Trigger = API_TRIGGER,
        parent_id: str | None = None,
        owner: str | None = None,
    ) -> list[ItemOutcome]:
        """Enqueue every request at once, one outcome each, in order (API.md section 10).

        An item given as a `ServiceError` (it could not be parsed) is refused with it;
        one refused item never refuses the others. The items' store writes and queue
        publishes go out together (the Redis store pipelines what one event-loop turn
        sends; the broker confirms them together), so a batch is not a round trip per item.
        """
        kind = self.registry.get(kind_name)
        outcomes: list[ItemOutcome] = [ItemOutcome("refused")] * len(requests)
        full: dict[str, ServiceError | None] = {}

        def routing_of(request: EnqueueRequest) -> str:
            return (
                external_routing(kind.name) if kind.external else request.proc_routing or "default"
            )

        for request in requests:
            if isinstance(request, EnqueueRequest):
                routing = routing_of(request)
                if routing not in full:
                    try:
                        await self._check_depth(routing)
                        full[routing] = None
                    except ServiceError as exc:
                        full[routing] = exc

        async def one(index: int, request: EnqueueRequest | ServiceError) -> None:
            try:
                if isinstance(request, ServiceError):
                    raise request
                refusal = full.get(routing_of(request))
                if refusal is not None:
                    raise refusal
                job, created = await self.enqueue(
                    kind_name,
                    request,
                    headers=headers,
                    incoming_at=incoming_at,
                    trigger=trigger,
                    parent_id=parent_id,
                    check_depth=False,
                    owner=owner,
                )
                outcomes[index] = ItemOutcome("created" if created else "existing", job)
            except ServiceError as exc:
                outcomes[index] = ItemOutcome("refused", error=exc.body()["error"])
            except BackendUnavailable as exc:
                error: dict[str, object] = {
                    "code": "backend_unavailable",
                    "message": str(exc),
                    "backend": exc.backend,
                }
                outcomes[index] = ItemOutcome("refused", error=error)

        # Items with ruled keys are all inserted at once, so that two of one key in a batch
        # meet (the second sees the first hold it). Others are shared by a few senders,
        # in order: their writes of one loop turn still go out together, and a task
        # per item cost more than the item's own work.
        keyed = kind.uniqueness is not Uniqueness.NONE and any(
            isinstance(r, EnqueueRequest) and r.key is not None for r in requests
        )
        items = iter(enumerate(requests))

        async def send() -> None:
            for index, request in items:
                await one(index, request)

        async with anyio.create_task_group() as tasks:
            for _ in range(len(requests) if keyed else min(len(requests), _BATCH_SENDERS)):
                tasks.start_soon(send)
        return outcomes

    async def key_context(self, kind_name: str, key: str) -> dict[str, object]:
        """The key's rule, holder and most recent jobs (API.md section 6)."""
        kind = self.registry.get(kind_name)
        holder = await self.store.key_holder(kind.name, key)
        if holder is not None and not self.hooks.visible(holder):
            holder = None  # another owner's (API.md section 15)
        query = self.hooks.narrow(JobQuery(kind=kind.name, key=key, limit=20))
        page = await self.store.list_jobs(query)
        expose = self.expose_tech_info
        return {
            "kind": kind.name,
            "key": key,
            "rule": str(kind.uniqueness),
            "holder": holder.status(expose_tech_info=expose) if holder is not None else None,
            "jobs": [job.status(expose_tech_info=expose) for job in page.items],
        }

    async def get(self, job_id: str, kind: str | None = None) -> Job:
        """The job; `JobNotFound` when unknown, purged, of another kind than `kind`, or
        hidden from the current caller by a visibility hook (another owner's)."""
        job = await self.store.get(job_id)
        if (
            job is None
            or (kind is not None and job.kind != kind)
            or (self.hooks.visibility and not self.hooks.visible(job))
        ):
            raise JobNotFound(f"no job {job_id}" + (f" of kind {kind}" if kind else ""))
        return job

    async def wait_for_change(
        self, job_id: str, *, kind: str | None = None, wait: float = 0.0, since: int | None = None
    ) -> Job:
        """The job once its version is above `since` (default: now), or after `wait` seconds."""
        job = await self.get(job_id, kind)
        if since is None:
            since = job.version
        if job.version > since or wait <= 0:
            return job
        with anyio.move_on_after(wait):
            while True:
                with self.store.hub.listen(job_id) as changed:
                    job = await self.get(job_id, kind)
                    if job.version > since:
                        return job
                    await changed.wait()
        return await self.get(job_id, kind)

    async def watch(
        self, job_id: str, *, kind: str | None = None, heartbeat: float = 15.0
    ) -> AsyncIterator[Job | None]:
        """The job now and after every change, until terminal; None every `heartbeat` s idle."""
        seen = -1
        while True:
            with self.store.hub.listen(job_id) as changed:
                job = await self.get(job_id, kind)
                if job.version > seen:
                    seen = job.version
                    yield job
                if job.state.terminal:
                    return
                with anyio.move_on_after(heartbeat) as idle:
                    await changed.wait()
            if idle.cancelled_caught:
                yield None

    async def stop(self, job_id: str, *, kind: str | None = None) -> tuple[Job, bool]:
        """Ask the job to stop; `(job, True)` when it is running and will stop shortly."""
        await self.get(job_id, kind)
        try:
            job = await self.transition(job_id, RequestStop())
        except TransitionRefused as refused:
            raise JobStateConflict(refused.job) from None
        return job, job.state is JobState.RUNNING

    async def result(self, job_id: str, *, kind: str | None = None) -> tuple[Job, bytes | None]:
        """The succeeded job and its result bytes (None: no result); else `JobStateConflict`."""
        job = await self.get(job_id, kind)
        if job.state is not JobState.SUCCEEDED:
            raise JobStateConflict(job)
        data = await self.store.get_result(job_id) if job.result_size is not None else None
        return job, data

    async def list_jobs(self, query: JobQuery) -> Page:
        """A page of jobs, newest first (only those the current caller may see)."""
        return await self.store.list_jobs(self.hooks.narrow(query))

    async def release(self, kind_name: str, key: str) -> bool:
        """Free a `once` key of `kind_name` (not one whose holder the caller cannot see)."""
        self.registry.get(kind_name)
        if self.hooks.visibility:
            holder = await self.store.key_holder(kind_name, key)
            if holder is not None and not self.hooks.visible(holder):
                return False
        return await self.store.release_key(kind_name, key)

    # -- housekeeping ---------------------------------------------------------

    async def sweep(self, now: datetime | None = None, *, grace: float = 1.0) -> int:
        """Fail unfinished jobs past their deadline (plus `grace`) and purge expired ones."""
        now = now or utcnow()
        await self.store.purge_expired(now)
        late = await self.store.overdue(now - timedelta(seconds=grace))
        for job_id in late:
            with contextlib.suppress(TransitionRefused, JobNotFound):
                job = await self.get(job_id)
                await self.fail_for_good(job, TimeOut())
        for job_id in await self.store.lapsed(now):
            await self.take_back(job_id, now)
        await self._publish_taken_back_again(now)
        if now >= self._next_repair:
            self._next_repair = now + REPAIR_EVERY
            await self.repair(now)
        return len(late)

    async def repair(self, now: datetime) -> int:
        """Re-publish queued jobs that should have started long ago while their queue is
        empty: their message was lost (the node died between storing the record and
        publishing it). A spare message costs nothing: the start is a compare-and-set.
        Answers how many were published again."""
        republished = 0
        for job_id in await self.store.unfinished():
            job = await self.store.get(job_id)
            if job is None or job.state is not JobState.QUEUED or job.after is not None:
                continue
            if now - (job.not_before or job.created_at) < REPAIR_AFTER:
                continue
            routing = self.routing_of(job)
            if await self.queue.depth(routing) > 0:
                continue  # a backlog: its message is most likely waiting its turn
            await self.queue.publish(job.id, routing)
            republished += 1
            log.warning("job %s was queued with no message: published it again", job.id)
        return republished

    async def _publish_taken_back_again(self, now: datetime) -> None:
        for job_id, (when, count) in list(self._taken_back.items()):
            if now - when < timedelta(seconds=2):
                continue
            job = await self.store.get(job_id)
            if job is None or job.state is not JobState.QUEUED or count >= 5:
                del self._taken_back[job_id]
                continue
            # Still not started: its message may sit with the frozen node's consumer
            # (until the broker notices it is gone). A spare copy costs nothing: the
            # start is a compare-and-set.
            self._taken_back[job_id] = (now, count + 1)
            await self.queue.publish(job.id, self.routing_of(job))

    async def take_back(self, job_id: str, now: datetime) -> None:
        """Re-queue a running job whose lease lapsed (its node is dead, frozen or cut
        off), fenced by its attempt so that node's late outcome is refused; a job lost
        `max_deliveries` times fails with `dead_letter`."""
        lease = await self.store.lease_of(job_id)
        if lease is not None and lease >= now:
            return  # renewed meanwhile
        try:
            job = await self.get(job_id)
        except JobNotFound:
            job = None
        if job is None or job.state is not JobState.RUNNING:
            await self.store.drop_lease(job_id)  # it ended; the lease was left behind
            return
        try:
            if job.stop_requested:
                # Asked to stop and its node (or processor) is gone: nothing runs it again.
                await self.transition(job.id, Stopped(job.attempt))
            elif job.attempt >= self.max_deliveries:
                await self.fail_for_good(job, Fail(dead_letter_error(job), job.attempt))
            else:
                await self.transition(job.id, Retry(LOST_ERROR, attempt=job.attempt))
                await self.publish(await self.get(job.id))
                self._taken_back[job.id] = (now, 1)
        except (TransitionRefused, JobNotFound):
            pass  # it moved on meanwhile
        finally:
            await self.store.drop_lease(job_id)

    async def put_back_early(self, job: Job) -> bool:
        """True when queued `job` was delivered before its `notBefore` (a clock ahead, a
        requeue): its message is published again, delayed until then."""
        if job.state is not JobState.QUEUED or job.not_before is None:
            return False
        wait = (job.not_before - utcnow()).total_seconds()
        if wait <= 0:
            return False
        await self.queue.publish(job.id, self.routing_of(job), delay=wait)
        return True

    async def retry_later(self, job: Job, kind: JobKind, error: ErrorInfo | None) -> Job:
        """End `job`'s running attempt with a retryable `error`: queued again, not before
        the kind's backoff for this attempt (API.md section 13), its message published
        with that delay. The caller checked that retries are left."""
        backoff = retry_backoff(
            job.attempt, kind.retry_delay, kind.retry_max_delay, random.uniform(-0.25, 0.25)
        )
        not_before = utcnow() + timedelta(seconds=backoff) if backoff > 0 else None
        queued = await self.transition(job.id, Retry(error, not_before, job.attempt))
        await self.queue.publish(job.id, self.routing_of(job), delay=max(backoff, 0.0))
        return queued

    # -- failing for good -----------------------------------------------------

    async def fail_for_good(self, job: Job, event: Fail | TimeOut) -> Job:
        """Fail `job` for good; when its kind compensates, the compensation job is stored
        first (its id derives from the job's, so a repeat finds it), the failure then
        names it in `compensationId`, and only then is it queued. A job that did not
        fail after all (stopped, finished meanwhile) gets no compensation."""
        kind = self.registry.get(job.kind) if job.kind in self.registry else None
        if kind is None or kind.compensation is None:
            return await self.transition(job.id, event)
        error = event.error if isinstance(event, Fail) else TIMEOUT_ERROR
        compensation = Compensation(
            job_id=job.id,
            content=msgspec.json.decode(job.content),
            error=error,
            steps={name: msgspec.json.decode(raw) for name, raw in job.step_results.items()},
        )
        request = EnqueueRequest(
            content=msgspec.Raw(msgspec.json.encode(compensation)),
            request_id=compensation_id(job.id),
            proc_routing=job.proc_routing,
            callback_routing=job.callback_routing,
        )
        undo, _ = await self.enqueue(
            kind.compensation,
            request,
            trigger=Trigger(TriggerType.COMPENSATION, job.kind),
            parent_id=job.id,
            check_depth=False,
            publish=False,
            owner=job.owner,
        )
        attempt = event.attempt
        try:
            failed = await self.transition(job.id, Fail(error, attempt, undo.id))
        except (TransitionRefused, JobNotFound):
            with contextlib.suppress(BackendUnavailable):
                await self.store.forget(undo)
            raise
        if undo.state is JobState.QUEUED:
            await self.queue.publish(undo.id, self.routing_of(undo))
        return failed

    async def run_sweeper(self, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled; a failing sweep is retried."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.sweep(grace=1.0 + interval)
            except BackendUnavailable:
                continue
