"""The job state machine: one pure function, `apply(job, event, now)`.

Every store, the API and the worker change a job only through `apply`; a store's
part is to make read-apply-write atomic. `TRANSITIONS` is the table of legal moves:
event type x current state -> new state. A move not in the table is refused with
`TransitionRefused`, which carries the unchanged job. An event that is legal but
changes nothing (a second stop request) returns the very same record, so stores
can skip the write and the version stays put.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .errors import TransitionRefused
from .model import ErrorInfo, Job, JobState, Progress, Step, Uniqueness

__all__ = [
    "DEAD_LETTER",
    "TRANSITIONS",
    "Event",
    "Fail",
    "Report",
    "RequestStop",
    "Retry",
    "Revive",
    "Start",
    "StepDone",
    "Stopped",
    "Succeed",
    "TimeOut",
    "allowed_from",
    "apply",
    "fenced_in",
    "lease_after",
    "startable",
]

Q, R = JobState.QUEUED, JobState.RUNNING
OK, KO, ST = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED


class Start(msgspec.Struct, frozen=True, tag=True):
    """A worker takes a queued job: queued -> running, attempt + 1.

    Past the job's deadline it becomes a `TimeOut` instead: queued -> failed. A job
    that may not start yet is refused (`startable`).
    """

    after_ended: bool = False
    # Kinds whose starts need a permit (max_concurrency, rate_limit): a job of one is
    # refused (handing the worker its record, no extra read) until `permitted`.
    limited: frozenset[str] = frozenset()
    permitted: bool = False
    # The lease the started job holds, taken in the same write (`lease_after`).
    lease_until: datetime | None = None


# `attempt` on the events a running attempt sends is its fencing token: given, the
# event is refused unless it is the job's current attempt, so a lost attempt's late
# progress or outcome changes nothing once the job runs again.


class Report(msgspec.Struct, frozen=True, tag=True):
    """The handler reports progress; None fields keep their current value."""

    percent: float | None = None
    biz_step: str | None = None
    message: str | None = None
    attempt: int | None = None


class StepDone(msgspec.Struct, frozen=True, tag=True):
    """A durable step completed: its JSON result is kept, a later attempt reuses it."""

    name: str
    result: msgspec.Raw
    attempt: int | None = None


class Succeed(msgspec.Struct, frozen=True, tag=True):
    """The handler returned: running -> succeeded, percent 100."""

    result_size: int | None = None
    result_mime: str | None = None
    attempt: int | None = None


class Fail(msgspec.Struct, frozen=True, tag=True):
    """The handler raised, or the job could not be run: -> failed.

    `compensation_id` names the job that compensates it (set with this change).
    """

    error: ErrorInfo
    attempt: int | None = None
    compensation_id: str | None = None


class Retry(msgspec.Struct, frozen=True, tag=True):
    """Run the job again (retryable error, or its worker was lost): running -> queued,
    not to start before `not_before` (a backoff)."""

    error: ErrorInfo | None = None
    not_before: datetime | None = None
    attempt: int | None = None


class RequestStop(msgspec.Struct, frozen=True, tag=True):
    """Stop: a queued job is stopped at once, a running one is flagged `stopRequested`."""


class Stopped(msgspec.Struct, frozen=True, tag=True):
    """The handler of a job with a stop request has exited: running -> stopped."""

    attempt: int | None = None


class Revive(msgspec.Struct, frozen=True, tag=True):
    """An operator requeues a dead letter (a job lost too often, a compensation that
    failed for good): failed -> queued, its attempt count kept (API.md section 13).

    With its kind's key `rule`, the store takes the job's key again in the same step
    (refusing with `KeyConflict` when another job holds it), so a revived job never
    runs beside the key's new holder.
    """

    rule: Uniqueness = Uniqueness.NONE


class TimeOut(msgspec.Struct, frozen=True, tag=True):
    """The processing deadline passed: queued | running -> failed (`timeout`)."""

    attempt: int | None = None


Event = (
    Start | Report | StepDone | Succeed | Fail | Retry | RequestStop | Stopped | Revive | TimeOut
)

TRANSITIONS: dict[type[Event], dict[JobState, JobState]] = {
    Start: {Q: R},
    Report: {R: R},
    StepDone: {R: R},
    Succeed: {R: OK},
    Fail: {Q: KO, R: KO},
    Retry: {R: Q},
    RequestStop: {Q: ST, R: R, ST: ST},
    Stopped: {R: ST},
    Revive: {KO: Q},
    TimeOut: {Q: KO, R: KO},
}

DEAD_LETTER = "dead_letter"

TIMEOUT_ERROR = ErrorInfo(
    error_id="timeout",
    biz_msg="The job did not finish in time.",
    tech_msg="processing timeout exceeded",
)


def fenced_in(job: Job, event: Event) -> bool:
    """Whether a running attempt's event (one carrying `attempt`) is still its job's: the
    job runs that very attempt. Taken back after a lapsed lease, a job is `queued` with
    the lost attempt's number until it starts again: the lost attempt's late outcome must
    not touch it. Events without `attempt` (the service's, the sweeper's) pass."""
    attempt = getattr(event, "attempt", None)
    return attempt is None or (job.state is JobState.RUNNING and attempt == job.attempt)


def startable(job: Job, event: Start, now: datetime) -> bool:
    """Whether `event` may start queued `job` now: not before its `notBefore`; for a
    limited kind, only with a permit; for a job that replaced its key's holder, only
    once the worker vouches that the holder has ended (terminal stays terminal, so
    that need not be atomic)."""
    if job.not_before is not None and now < job.not_before and now < job.deadline:
        return False
    if event.limited and job.kind in event.limited and not event.permitted:
        return False
    return job.after is None or event.after_ended


def allowed_from(event_type: type[Event]) -> frozenset[JobState]:
    """The states in which `event_type` is legal."""
    return frozenset(TRANSITIONS[event_type])


def lease_after(before: Job, after: Job, event: Event) -> datetime | bool:
    """What the write `before` -> `after` (by `event`) does to the job's lease, in the
    same atomic step: a job leaving `running` holds none (False: drop it), a `Start`
    with `lease_until` takes one (that moment); True: leave it as it is."""
    if before.state is JobState.RUNNING:
        return after.state is JobState.RUNNING
    if after.state is JobState.RUNNING and isinstance(event, Start) and event.lease_until:
        return event.lease_until
    return True


def apply(job: Job, event: Event, now: datetime) -> Job:
    """The record after `event`, the same record if nothing changes.

    Raises `TransitionRefused` (carrying `job`) when the move is not legal.
    """
    target = TRANSITIONS[type(event)].get(job.state)
    if target is None:
        raise TransitionRefused(job, type(event).__name__)
    if isinstance(event, Start):
        if not startable(job, event, now):
            raise TransitionRefused(job, "Start")
    else:
        attempt = getattr(event, "attempt", None)  # `fenced_in`, inlined: every event pays it
        if (
            attempt is not None and (attempt != job.attempt or job.state is not JobState.RUNNING)
        ) or (isinstance(event, Stopped) and not job.stop_requested):
            raise TransitionRefused(job, type(event).__name__)
    replace = msgspec.structs.replace
    version = job.version + 1
    match event:
        case Start():
            if now >= job.deadline:
                # Taken from the queue too late: it times out there and never starts.
                return apply(job, TimeOut(), now)
            return replace(
                job,
                state=target,
                attempt=job.attempt + 1,
                started_at=now,
                not_before=None,
                version=version,
            )
        case StepDone(name, result):
            steps = (*(s for s in job.steps if s.name != name), Step(name, now))
            results = {**job.step_results, name: result}
            return replace(job, steps=steps, step_results=results, version=version)
        case Report(percent, biz_step, message, _):
            old = job.progress
            progress = Progress(
                percent=old.percent if percent is None else min(100.0, max(0.0, float(percent))),
                biz_step=old.biz_step if biz_step is None else biz_step,
                message=old.message if message is None else message,
            )
            if progress == old:
                return job
            return replace(job, progress=progress, version=version)
        case Succeed(size, mime, _):
            progress = replace(job.progress, percent=100.0)
            return replace(
                job,
                state=target,
                progress=progress,
                error=None,
                result_size=size,
                result_mime=mime if size is not None else None,
                finished_at=now,
                version=version,
            )
        case Fail(error, _, compensation_id):
            return replace(
                job,
                state=target,
                error=error,
                finished_at=now,
                compensation_id=compensation_id or job.compensation_id,
                version=version,
            )
        case Retry(error, not_before):
            return replace(job, state=target, error=error, not_before=not_before, version=version)
        case RequestStop():
            if job.state is JobState.STOPPED or job.stop_requested:
                return job
            if target is JobState.STOPPED:
                return replace(
                    job, state=target, stop_requested=True, finished_at=now, version=version
                )
            return replace(job, stop_requested=True, version=version)
        case Stopped():
            return replace(job, state=target, finished_at=now, version=version)
        case Revive():
            # A fresh processing window: the old deadline has likely passed.
            window = job.deadline - (job.not_before or job.created_at)
            return replace(
                job,
                state=target,
                finished_at=None,
                deadline=now + window,
                not_before=None,
                version=version,
            )
        case TimeOut():
            return replace(job, state=target, error=TIMEOUT_ERROR, finished_at=now, version=version)
    raise AssertionError(event)  # pragma: no cover - the match is exhaustive
