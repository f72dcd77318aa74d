"""The in-process worker pool: takes deliveries, runs handlers, stores the outcome.

At most `concurrency` jobs run at once (the queue's prefetch). Each job runs in
its own cancel scope, registered with the change hub so that a stop request or a
terminal state written elsewhere cancels it. A delivery is acked only after the
job's terminal (or re-queued) state is stored.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream

from .changes import Change
from .context import BlockingJobContext, JobContext, encode_result
from .errors import (
    BackendUnavailable,
    JobError,
    JobNotFound,
    JobStopped,
    RetryableJobError,
    TransitionRefused,
    UnknownKind,
)
from .hooks import Attempt
from .interfaces import Delivery, StopsTaking
from .lifecycle import (
    TIMEOUT_ERROR,
    Event,
    Fail,
    Report,
    Retry,
    Start,
    StepDone,
    Stopped,
    Succeed,
    TimeOut,
)
from .limits import StartGate
from .model import ErrorInfo, Job, JobState, utcnow
from .registry import JobKind
from .rules import retries_left
from .service import LOST_ERROR, JobService, dead_letter_error

__all__ = ["WorkerPool"]

log = logging.getLogger("asyncproc")

DEADLINE_CHECK = timedelta(seconds=1)
SHUTDOWN_ERROR = ErrorInfo(error_id="lost", tech_msg="the worker shut down while running this job")
# Memory mode: the queue ends with the process, so a job cut off by shutdown is not
# given back to anyone; its record says so rather than claiming it will run again.
SHUTDOWN_FAILURE = ErrorInfo(
    error_id="shutdown",
    biz_msg="The service shut down before the job finished.",
    tech_msg="the node shut down while running this job and its queue ends with it",
)


class _DeadLetter(Exception):
    """The delivery's job failed as `dead_letter`: send the message to the dead letters."""


class _Run:
    """One running job: why it is ending early, if it is, and when an async one times out."""

    __slots__ = ("ctx", "deadline", "reason", "scope")

    def __init__(
        self, ctx: JobContext, scope: anyio.CancelScope, deadline: datetime | None
    ) -> None:
        self.ctx = ctx
        self.scope = scope
        self.deadline = deadline
        self.reason: str | None = None  # "stop", "timeout" or "gone"

    def end(self, reason: str, *, cancel: bool) -> None:
        if self.reason is None:
            self.reason = reason
        self.ctx.request_stop()
        if cancel:
            self.scope.cancel()


class WorkerPool:
    """Runs up to `concurrency` jobs from the queues of `routings`."""

    def __init__(
        self,
        service: JobService,
        *,
        routings: Sequence[str] = ("default",),
        concurrency: int = 16,
        shutdown_grace: float = 10.0,
        max_deliveries: int = 5,
        lease: float = 10.0,
        leases: bool = True,
    ) -> None:
        self.service = service
        self.lease = lease
        # Job leases matter where another node can take a job back. In one process (the
        # memory backends) the node that would sweep is the node that runs the job.
        self.leases = leases
        self.dropped = 0  # messages dropped because their job had no record
        # Jobs given back here because the store was unreachable: their lease is stale.
        self._stranded: set[str] = set()
        self.routings = tuple(routings)
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.max_deliveries = max_deliveries
        self.running: dict[str, _Run] = {}
        self._threads: anyio.CapacityLimiter | None = None
        self._intake: anyio.CancelScope | None = None
        self._idle: anyio.Event | None = None
        self._stopping = False
        self._give_back = True  # past the grace: re-queue (False: fail with `shutdown`)
        self._grace: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        # One timer for the whole pool cancels async handlers at their processing
        # deadline: a cancel scope with a deadline of its own costs a timer per job.
        self._deadlines_checked_by = utcnow()
        self._deadline_changed: anyio.Event | None = None
        # Start permits of kinds with `max_concurrency` / `rate_limit` (none: never used).
        self._gate = StartGate(service, lease)
        if not self._gate.kinds:
            # No permits to give back: skip `_process`'s layer on every delivery.
            self._process = self._run_delivery  # type: ignore[method-assign]

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume and run jobs until cancelled or `shutdown()`; then drain gracefully."""
        queue = self.service.queue
        self._threads = anyio.CapacityLimiter(self.concurrency)
        self._intake = anyio.CancelScope()
        self._stopped = anyio.Event()
        if self._stopping:
            self._intake.cancel()
        # `concurrency` long-lived runner tasks take deliveries from a buffer: spawning a
        # task per job costs more than a no-op job itself. The queue's prefetch bounds
        # the unsettled deliveries, so the buffer never holds more than `concurrency`.
        handoff, taken = anyio.create_memory_object_stream[Delivery](self.concurrency)
        try:
            with handoff, taken:
                async with queue.consume(self.routings, self.concurrency) as deliveries:
                    async with anyio.create_task_group() as jobs:
                        for _ in range(self.concurrency):
                            jobs.start_soon(self._runner, taken)
                        jobs.start_soon(self._enforce_deadlines)
                        jobs.start_soon(self._renew_leases)
                        held: Delivery | None = None  # taken from the queue, not handed over
                        try:
                            with self._intake:
                                task_status.started()
                                async for delivery in deliveries:
                                    try:
                                        handoff.send_nowait(delivery)
                                    except anyio.WouldBlock:
                                        held = delivery
                                        await handoff.send(delivery)
                                        held = None
                        finally:
                            handoff.close()
                            with anyio.CancelScope(shield=True):
                                # The broker sends this node nothing more, and what it
                                # sent that no runner started goes back at once, for
                                # another node, instead of starting during the grace.
                                if isinstance(deliveries, StopsTaking):
                                    await deliveries.stop_taking()
                                await self._give_back_unstarted(held, taken)
                                await self._drain(jobs)
        finally:
            self._stopped.set()

    async def _give_back_unstarted(
        self, held: Delivery | None, taken: MemoryObjectReceiveStream[Delivery]
    ) -> None:
        """Requeue the deliveries taken from the queue that no runner has started."""
        unstarted = [held] if held is not None else []
        while True:
            try:  # synchronous: no runner can take one in between
                unstarted.append(taken.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        for delivery in unstarted:
            try:
                await delivery.requeue()
            except BackendUnavailable:
                pass  # unsettled: the broker gives it back when the channel closes

    async def _runner(self, taken: anyio.abc.ObjectReceiveStream[Delivery]) -> None:
        """Run the jobs of deliveries one after the other until the intake closes."""
        async for delivery in taken:
            await self._handle(delivery)

    async def _enforce_deadlines(self) -> None:
        """Cancel each running async handler when its job's processing deadline passes."""
        while True:
            now = utcnow()
            # Look again at least every second, so that only a job due sooner than
            # that has to wake this task when it starts.
            check_by = now + DEADLINE_CHECK
            for run in list(self.running.values()):
                if run.deadline is None:
                    continue
                if run.deadline <= now:
                    run.end("timeout", cancel=True)
                elif run.deadline < check_by:
                    check_by = run.deadline
            self._deadlines_checked_by = check_by
            self._deadline_changed = anyio.Event()
            with anyio.move_on_after((check_by - now).total_seconds()):
                await self._deadline_changed.wait()

    async def _renew_leases(self) -> None:
        """Renew the leases of the jobs running here, three times per lease."""
        store = self.service.store
        while True:
            await anyio.sleep(self.lease / 3)
            if self.running:
                until = utcnow() + timedelta(seconds=self.lease)
                try:
                    if self.leases:
                        await store.hold_lease(list(self.running), until)
                    await self._gate.renew(until)
                except BackendUnavailable:
                    continue  # the next round tries again; a lapse re-runs the jobs elsewhere

    def shutdown(self, *, give_back: bool = True, grace: float | None = None) -> None:
        """Stop taking deliveries; running jobs get `shutdown_grace` seconds to finish.

        Past the grace they are cancelled and given back to the queue (`give_back`,
        record `queued`), or, when the queue ends with this process (memory mode),
        failed with errorId `shutdown`. Called again with `grace=0`, it ends the wait
        now (a second Ctrl-C).
        """
        self._stopping = True
        self._give_back = give_back
        if grace is not None:
            self.shutdown_grace = min(self.shutdown_grace, grace)
            if grace <= 0 and self._grace is not None:
                self._grace.cancel()
        if self._intake is not None:
            self._intake.cancel()

    async def wait_stopped(self) -> None:
        """Return once `run` has ended (drained), at once if it never started."""
        if self._stopped is not None:
            await self._stopped.wait()

    async def _drain(self, jobs: anyio.abc.TaskGroup) -> None:
        if self.running:
            log.info(
                "shutdown: %d running job(s) get up to %gs to finish",
                len(self.running),
                self.shutdown_grace,
            )
        with anyio.move_on_after(self.shutdown_grace) as self._grace:
            while self.running:
                self._idle = anyio.Event()
                await self._idle.wait()
        if self.running:
            log.warning(
                "shutdown: %d job(s) still running after the grace: %s",
                len(self.running),
                "giving them back to the queue"
                if self._give_back
                else "failing them (errorId shutdown: the memory queue ends with this process)",
            )
        for run in self.running.values():
            run.end("shutdown", cancel=False)  # a blocking handler sees stop_requested
        jobs.cancel_scope.cancel()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except BackendUnavailable:
            # The outcome is not stored: let the queue deliver the job again. Its lease
            # could not be dropped either: when the message comes back here, the job is
            # known to be stranded, not alive elsewhere (see `_start`).
            self._stranded.add(delivery.job_id)
            with anyio.CancelScope(shield=True):
                await delivery.requeue()
        except _DeadLetter:
            await delivery.reject()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if self._give_back:
                    await delivery.requeue()
                else:  # memory mode: the job was failed, nothing may run it again
                    await delivery.ack()
            raise
        else:
            await delivery.ack()

    def _leased(self, start: Start) -> Start:
        """`start` taking the job's lease in the same write, from now (workers with
        leases): the lease is held the moment the job is `running`."""
        if not self.leases:
            return start
        return msgspec.structs.replace(start, lease_until=utcnow() + timedelta(seconds=self.lease))

    async def _start(self, delivery: Delivery) -> Job | None:
        """The job moved to running, or None when this delivery has nothing to run."""
        service = self.service
        gate = self._gate
        # Limited kinds' starts are refused until a permit is held: the refusal hands
        # over the record, so unlimited kinds pay nothing and limited ones no extra read.
        start = Start(limited=gate.names) if gate.names else Start()
        if delivery.hint:
            service.store.take_hint(delivery.job_id, delivery.hint)
        try:
            started = await service.transition(delivery.job_id, self._leased(start))
            return started if started.state is JobState.RUNNING else None
        except JobNotFound:
            # A message whose record expired or never was (or was lost with a Redis
            # that kept no AOF): dropped, but never silently.
            self.dropped += 1
            log.warning("dropped the message of job %s: it has no record", delivery.job_id)
            return None
        except TransitionRefused as refused:
            job = refused.job
        if await service.put_back_early(job):
            return None
        limited = job.kind in gate.names
        if (
            limited
            and (job.state is JobState.QUEUED or delivery.redelivered)
            and not await gate.admit(delivery, job)
        ):
            return None  # held in `queued`, its message re-published with the wait
        # The start to send now: with the permit just taken, for a limited kind.
        start = Start(limited=gate.names, permitted=True) if limited else Start()
        if job.state is JobState.QUEUED and job.after is not None:
            return await self._start_after(job, start)
        if job.state is JobState.QUEUED:
            try:  # its time came, or its permit, between the refusal and now
                started = await service.transition(job.id, self._leased(start))
            except TransitionRefused:
                return None
            return started if started.state is JobState.RUNNING else None
        if not (job.state is JobState.RUNNING and delivery.redelivered):
            return None  # finished, stopped, or a duplicate delivery of a running job
        if job.id in self.running:
            return None
        stranded = job.id in self._stranded
        self._stranded.discard(job.id)
        lease = None if stranded else await service.store.lease_of(job.id)
        if lease is not None and lease >= utcnow():
            # Its node still renews the lease (the broker gave the message back after a
            # connection hiccup, say): it runs there; this copy of the message is spare.
            return None
        # Redelivered while marked running and no live lease: the node that ran it is gone.
        if job.attempt >= self.max_deliveries:
            await service.transition(job.id, Fail(dead_letter_error(job)))
            raise _DeadLetter
        await service.transition(job.id, Retry(LOST_ERROR, attempt=job.attempt))
        try:
            # It ran before, so the holder it replaced (if any) had ended.
            started = await service.transition(
                job.id, self._leased(msgspec.structs.replace(start, after_ended=True))
            )
        except TransitionRefused:
            return None
        return started if started.state is JobState.RUNNING else None

    async def _start_after(self, job: Job, start: Start) -> Job | None:
        """Start a job that replaced its key's holder once that holder is terminal."""
        store = self.service.store
        assert job.after is not None
        while True:
            with store.hub.listen(job.after) as changed:
                holder = await store.get(job.after)
                if holder is None or holder.state.terminal:
                    break
                # Re-read now and then: a change notification may be lost in an outage.
                with anyio.move_on_after(1.0):
                    await changed.wait()
            current = await store.get(job.id)
            if current is None or current.state is not JobState.QUEUED:
                return None  # stopped or timed out while it waited
        try:
            started = await self.service.transition(
                job.id, self._leased(msgspec.structs.replace(start, after_ended=True))
            )
        except (TransitionRefused, JobNotFound):
            return None
        return started if started.state is JobState.RUNNING else None

    async def _process(self, delivery: Delivery) -> None:
        if not self._gate.kinds:
            await self._run_delivery(delivery)
            return
        try:
            await self._run_delivery(delivery)
        finally:
            # A limited kind's permit goes back however its job ended, or if it never
            # started; the release wakes the kind's oldest waiter.
            if delivery in self._gate.held:
                with anyio.CancelScope(shield=True):
                    await self._gate.release(delivery)

    async def _run_delivery(self, delivery: Delivery) -> None:
        job = await self._start(delivery)
        if job is None:
            return
        service = self.service
        remaining = (job.deadline - utcnow()).total_seconds()
        if remaining <= 0:
            await self._finish(job, TimeOut())
            return
        try:
            kind = service.registry.get(job.kind)
            content = kind.read_content(job.content)
        except (UnknownKind, ValueError) as exc:
            error = ErrorInfo(error_id="bad_job", tech_msg=str(exc))
            await self._finish(job, Fail(error))
            return

        attempt = job.attempt

        async def report(event: Report) -> None:
            try:
                await service.transition(job.id, msgspec.structs.replace(event, attempt=attempt))
            except TransitionRefused:
                pass  # the job ended meanwhile; its cancellation is on its way
            except BackendUnavailable:
                pass  # progress is advisory: an outage must not fail the job

        async def store_step(name: str, result: bytes) -> None:
            # Refused (the job ended, or another attempt owns it): this attempt stops here.
            await service.transition(job.id, StepDone(name, msgspec.Raw(result), attempt))

        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            attempt=job.attempt,
            incoming_at=job.incoming_at,
            headers=job.headers,
            report=report,
            key=job.key,
            # The jobs it starts (a selection's items) are its owner's too.
            starter=service.enqueue_many
            if job.owner is None
            else partial(service.enqueue_many, owner=job.owner),
            steps=job.step_results,
            step_store=store_step,
        )
        # A blocking handler cannot be cancelled: `_call_blocking` flags it at the deadline.
        deadline = job.deadline if kind.is_async else None
        run = _Run(ctx, anyio.CancelScope(), deadline)
        self.running[job.id] = run
        changed = self._deadline_changed
        if changed is not None and deadline is not None and deadline < self._deadlines_checked_by:
            changed.set()

        def on_change(change: Change) -> None:
            # "gone": finished elsewhere, or taken back after a lapsed lease (then this
            # attempt's outcome would be refused anyway: nothing is sent for it).
            stopping = change.stop_requested and change.state is JobState.RUNNING
            run.end("stop" if stopping else "gone", cancel=kind.is_async)

        store = service.store
        # What the around-attempt hooks see (none registered: no object, no layer).
        hooked = Attempt(job) if service.hooks.around_attempt else None
        try:
            async with service.hooks.around(hooked) if hooked is not None else _NO_HOOKS:
                with store.hub.on_stop(job.id, on_change):
                    event, value = await self._call(kind, ctx, content, run, remaining)
                if run.reason != "gone":
                    if hooked is not None:
                        _tell_outcome(hooked, kind, event)
                    await self._finish_run(job, kind, event, value)
        except anyio.get_cancelled_exc_class():
            # Shutdown cancelled the job: give it back to the queue for another node
            # (the delivery goes back in `_handle`), or, when nobody can take it after
            # this process (memory mode), record that it failed. `attempt` fences it:
            # a job another node already runs again is left alone.
            end: Event = (
                Retry(SHUTDOWN_ERROR, attempt=attempt)
                if self._give_back
                else Fail(SHUTDOWN_FAILURE, attempt=attempt)
            )
            with anyio.CancelScope(shield=True):
                try:
                    await service.transition(job.id, end)
                except (TransitionRefused, JobNotFound, BackendUnavailable):
                    pass
            raise
        finally:
            del self.running[job.id]
            if not self.running and self._idle is not None:
                self._idle.set()
            # Its lease went with the write that took it out of `running` (whoever
            # wrote it: `lifecycle.lease_after`); a job still marked running here (its
            # end not stored in an outage) keeps it until it lapses and is swept.

    async def _call(
        self, kind: JobKind, ctx: JobContext, content: Any, run: _Run, remaining: float
    ) -> tuple[Event, Any]:
        """Run the handler: the event that ends the job, and the handler's return value."""
        try:
            if kind.is_async:
                with run.scope:
                    value = await kind.handler(ctx, content)
                if run.scope.cancelled_caught and run.reason is None:
                    run.reason = "timeout"
            else:
                value = await self._call_blocking(kind, ctx, content, run, remaining)
        except JobStopped:
            value = None
        except RetryableJobError as exc:
            return Retry(_job_error(exc)), None
        except JobError as exc:
            return Fail(_job_error(exc)), None
        except BackendUnavailable:
            raise  # a step could not be stored: the attempt is given back, not failed
        except TransitionRefused:
            # A step could not be stored: the job ended or moved on without this attempt.
            run.reason = "gone"
            return TimeOut(attempt=ctx.attempt), None
        except Exception as exc:
            if kind.retry_on and isinstance(exc, kind.retry_on):
                return Retry(_exception_error(exc, "retryable")), None
            # Always logged with its traceback, whatever `expose_tech_info` shows clients.
            log.error(
                "job %s (%s, attempt %d) failed with an unhandled error",
                ctx.id,
                ctx.kind,
                ctx.attempt,
                exc_info=True,
                extra={"jobId": ctx.id, "kind": ctx.kind, "attempt": ctx.attempt},
            )
            return Fail(
                ErrorInfo(
                    error_id="unhandled",
                    tech_msg=str(exc) or type(exc).__name__,
                    tech_info=traceback.format_exc(),
                )
            ), None
        if run.reason == "stop":
            return Stopped(), None
        if run.reason is not None:  # timeout, or finished elsewhere (then refused below)
            return TimeOut(attempt=ctx.attempt), None
        return Succeed(), value

    async def _call_blocking(
        self, kind: JobKind, ctx: JobContext, content: Any, run: _Run, remaining: float
    ) -> Any:
        """Run a plain `def` handler in a thread; flag it stopping at the deadline."""
        outcome: list[Any] = []
        failure: list[BaseException] = []

        async with anyio.create_task_group() as watchdog:

            async def call() -> None:
                try:
                    outcome.append(
                        await anyio.to_thread.run_sync(
                            kind.handler, BlockingJobContext(ctx), content, limiter=self._threads
                        )
                    )
                except Exception as exc:
                    failure.append(exc)
                finally:
                    watchdog.cancel_scope.cancel()

            watchdog.start_soon(call)
            await anyio.sleep(remaining)
            run.end("timeout", cancel=False)
        if failure:
            raise failure[0]
        return outcome[0] if outcome else None

    async def _finish_run(self, job: Job, kind: JobKind, event: Event, value: Any) -> None:
        if isinstance(event, Succeed):
            try:
                data, mime = encode_result(value)
            except (TypeError, ValueError) as exc:  # msgspec.EncodeError is a ValueError
                error = ErrorInfo(error_id="bad_result", tech_msg=f"cannot encode result: {exc}")
                await self._finish(job, Fail(error))
                return
            size = len(data) if data is not None else None
            await self._finish(job, Succeed(size, mime, job.attempt), data)
            return
        if isinstance(event, Retry):
            if retries_left(job, kind.retries):
                with anyio.CancelScope(shield=True):
                    try:
                        await self.service.retry_later(job, kind, event.error)
                    except (TransitionRefused, JobNotFound):
                        pass  # stopped, timed out or purged meanwhile: that outcome stands
                return
            event = Fail(event.error or ErrorInfo(error_id="failed"))
        if isinstance(event, Fail | TimeOut):
            with anyio.CancelScope(shield=True):
                try:
                    if isinstance(event, Fail):
                        event = msgspec.structs.replace(event, attempt=job.attempt)
                    current = await self.service.get(job.id)
                    await self.service.fail_for_good(current, event)
                except (TransitionRefused, JobNotFound):
                    pass  # stopped, timed out or purged meanwhile: that outcome stands
            return
        await self._finish(job, event)

    async def _finish(self, job: Job, event: Event, result: bytes | None = None) -> None:
        if isinstance(event, Stopped):
            event = Stopped(job.attempt)
        with anyio.CancelScope(shield=True):
            try:
                # Only the nodes watching it need to hear: no other node runs it.
                await self.service.transition(job.id, event, result=result, by_runner=True)
            except (TransitionRefused, JobNotFound):
                pass  # stopped, timed out or purged meanwhile: that outcome stands


_NO_HOOKS = contextlib.nullcontext()


def _tell_outcome(attempt: Attempt, kind: JobKind, event: Event) -> None:
    """Tell the around-attempt hooks how the attempt ended (the state it leads to)."""
    if isinstance(event, Succeed):
        attempt.outcome = JobState.SUCCEEDED
    elif isinstance(event, Stopped):
        attempt.outcome = JobState.STOPPED
    elif isinstance(event, Retry):
        attempt.error = event.error
        again = retries_left(attempt.job, kind.retries)
        attempt.outcome = JobState.QUEUED if again else JobState.FAILED
    elif isinstance(event, Fail):
        attempt.outcome, attempt.error = JobState.FAILED, event.error
    elif isinstance(event, TimeOut):
        attempt.outcome, attempt.error = JobState.FAILED, TIMEOUT_ERROR


def _job_error(exc: JobError) -> ErrorInfo:
    return ErrorInfo(
        error_id=exc.error_id,
        biz_msg=exc.biz_msg,
        tech_msg=exc.tech_msg,
        tech_info=traceback.format_exc(),
    )


def _exception_error(exc: BaseException, error_id: str) -> ErrorInfo:
    return ErrorInfo(
        error_id=error_id,
        tech_msg=str(exc) or type(exc).__name__,
        tech_info=traceback.format_exc(),
    )
