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
from .model import ErrorInfo, Job, JobState, Progress

__all__ = [
    "TRANSITIONS",
    "Event",
    "Fail",
    "Report",
    "RequestStop",
    "Retry",
    "Start",
    "Stopped",
    "Succeed",
    "TimeOut",
    "allowed_from",
    "apply",
]

Q, R = JobState.QUEUED, JobState.RUNNING
OK, KO, ST = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED


class Start(msgspec.Struct, frozen=True, tag=True):
    """A worker takes a queued job: queued -> running, attempt + 1.

    Past the job's deadline it becomes a `TimeOut` instead: queued -> failed. A job
    that replaced its key's holder (`after` set) is refused until the worker vouches
    with `after_ended` that the holder is terminal (terminal stays terminal, so the
    check need not be atomic with the start).
    """

    after_ended: bool = False


class Report(msgspec.Struct, frozen=True, tag=True):
    """The handler reports progress; None fields keep their current value."""

    percent: float | None = None
    biz_step: str | None = None
    message: str | None = None


class Succeed(msgspec.Struct, frozen=True, tag=True):
    """The handler returned: running -> succeeded, percent 100."""

    result_size: int | None = None
    result_mime: str | None = None


class Fail(msgspec.Struct, frozen=True, tag=True):
    """The handler raised, or the job could not be run: -> failed."""

    error: ErrorInfo


class Retry(msgspec.Struct, frozen=True, tag=True):
    """Run the job again (retryable error, or its worker was lost): running -> queued."""

    error: ErrorInfo | None = None


class RequestStop(msgspec.Struct, frozen=True, tag=True):
    """Stop: a queued job is stopped at once, a running one is flagged `stopRequested`."""


class Stopped(msgspec.Struct, frozen=True, tag=True):
    """The handler of a job with a stop request has exited: running -> stopped."""


class TimeOut(msgspec.Struct, frozen=True, tag=True):
    """The processing deadline passed: queued | running -> failed (`timeout`)."""


Event = Start | Report | Succeed | Fail | Retry | RequestStop | Stopped | TimeOut

TRANSITIONS: dict[type[Event], dict[JobState, JobState]] = {
    Start: {Q: R},
    Report: {R: R},
    Succeed: {R: OK},
    Fail: {Q: KO, R: KO},
    Retry: {R: Q},
    RequestStop: {Q: ST, R: R, ST: ST},
    Stopped: {R: ST},
    TimeOut: {Q: KO, R: KO},
}

TIMEOUT_ERROR = ErrorInfo(
    error_id="timeout",
    biz_msg="The job did not finish in time.",
    tech_msg="processing timeout exceeded",
)


def allowed_from(event_type: type[Event]) -> frozenset[JobState]:
    """The states in which `event_type` is legal."""
    return frozenset(TRANSITIONS[event_type])


def apply(job: Job, event: Event, now: datetime) -> Job:
    """The record after `event`, the same record if nothing changes.

    Raises `TransitionRefused` (carrying `job`) when the move is not legal.
    """
    target = TRANSITIONS[type(event)].get(job.state)
    if (
        target is None
        or (isinstance(event, Stopped) and not job.stop_requested)
        or (isinstance(event, Start) and job.after is not None and not event.after_ended)
    ):
        raise TransitionRefused(job, type(event).__name__)
    replace = msgspec.structs.replace
    version = job.version + 1
    match event:
        case Start():
            if now >= job.deadline:
                # Taken from the queue too late: it times out there and never starts.
                return apply(job, TimeOut(), now)
            return replace(
                job, state=target, attempt=job.attempt + 1, started_at=now, version=version
            )
        case Report(percent, biz_step, message):
            old = job.progress
            progress = Progress(
                percent=old.percent if percent is None else min(100.0, max(0.0, float(percent))),
                biz_step=old.biz_step if biz_step is None else biz_step,
                message=old.message if message is None else message,
            )
            if progress == old:
                return job
            return replace(job, progress=progress, version=version)
        case Succeed(size, mime):
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
        case Fail(error):
            return replace(job, state=target, error=error, finished_at=now, version=version)
        case Retry(error):
            return replace(job, state=target, error=error, version=version)
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
        case TimeOut():
            return replace(job, state=target, error=TIMEOUT_ERROR, finished_at=now, version=version)
    raise AssertionError(event)  # pragma: no cover - the match is exhaustive
