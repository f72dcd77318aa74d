"""The job record and the Structs the API, the stores and the queue exchange.

`Job` is the stored record: the public status fields of API.md section 3 plus the
private fields a worker needs (content, headers, deadline, retention). `JobStatus`
is the public view, encoded for every API answer.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

__all__ = [
    "TERMINAL_STATES",
    "ErrorInfo",
    "Job",
    "JobState",
    "JobStatus",
    "OnConflict",
    "Progress",
    "Step",
    "Trigger",
    "TriggerType",
    "Uniqueness",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock the lifecycle reads)."""
    return datetime.now(UTC)


class JobState(enum.StrEnum):
    """Where a job is in its life (API.md section 3)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        """True for succeeded, failed and stopped: nothing changes them."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED})


class Uniqueness(enum.StrEnum):
    """A kind's rule on the business `key` (API.md section 6)."""

    NONE = "none"
    ACTIVE = "active"
    ONCE = "once"


class OnConflict(enum.StrEnum):
    """What an enqueue does when the key's holder is in the way (API.md section 6)."""

    REJECT = "reject"
    EXISTING = "existing"
    REPLACE = "replace"


class TriggerType(enum.StrEnum):
    """How a job was started (API.md section 3, `trigger.type`)."""

    API = "api"
    BATCH = "batch"
    SCHEDULE = "schedule"
    EVENT = "event"
    MESSAGE = "message"
    SELECTION = "selection"
    COMPENSATION = "compensation"


class Trigger(msgspec.Struct, frozen=True, gc=False):
    """How a job was started: the way, and the schedule's, trigger's or selection's name."""

    type: TriggerType = TriggerType.API
    name: str | None = None


API_TRIGGER = Trigger()


class Step(msgspec.Struct, frozen=True, gc=False):
    """A completed durable step of a job (API.md section 13)."""

    name: str
    at: datetime


class Progress(msgspec.Struct, frozen=True, rename="camel", gc=False):
    """Percent (0..100 or None), business step and message of a job."""

    percent: float | None = None
    biz_step: str | None = None
    message: str | None = None


class ErrorInfo(msgspec.Struct, frozen=True, rename="camel", gc=False):
    """Why a job failed: a stable id, a message for the user, the technical detail."""

    error_id: str | None = None
    biz_msg: str | None = None
    tech_msg: str | None = None
    tech_info: str | None = None


class JobStatus(msgspec.Struct, frozen=True, rename="camel", omit_defaults=False):
    """The public status of a job, exactly the fields of API.md section 3."""

    id: str
    kind: str
    state: JobState
    stop_requested: bool
    progress: Progress
    error: ErrorInfo | None
    result_size: int | None
    result_mime: str | None
    attempt: int
    key: str | None
    proc_routing: str
    callback_routing: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    not_before: datetime | None
    parent_id: str | None
    trigger: Trigger
    owner: str | None
    steps: tuple[Step, ...]
    compensation_id: str | None
    version: int


class Job(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True, gc=False):
    """The stored job record: the public status plus what the worker needs.

    Records are immutable; every change is a new record made by `lifecycle.apply`.
    """

    # gc=False (here and on Progress, ErrorInfo): a record holds only strings, times,
    # bytes and a str->str dict, so it can never be part of a reference cycle, and a
    # store of many thousand records would otherwise make every full GC pass crawl.

    id: str
    kind: str
    state: JobState
    created_at: datetime
    deadline: datetime
    retention: float
    version: int = 1
    stop_requested: bool = False
    progress: Progress = Progress()
    error: ErrorInfo | None = None
    result_size: int | None = None
    result_mime: str | None = None
    attempt: int = 0
    key: str | None = None
    proc_routing: str = "default"
    callback_routing: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    content: msgspec.Raw = msgspec.Raw(b"null")
    headers: dict[str, str] = {}
    incoming_at: datetime | None = None
    not_before: datetime | None = None
    parent_id: str | None = None
    trigger: Trigger = API_TRIGGER
    owner: str | None = None
    steps: tuple[Step, ...] = ()
    # The completed steps' JSON results, by name (for later attempts and compensation).
    step_results: dict[str, msgspec.Raw] = {}
    compensation_id: str | None = None
    # The key's previous holder, replaced by this job (`onConflict: replace`): this
    # job does not start before that one is terminal.
    after: str | None = None
    # The W3C `traceparent` of the span that enqueued it (tracing on): each attempt's
    # span is its child, on whichever node runs it.
    traceparent: str | None = None

    @property
    def expires_at(self) -> datetime:
        """Processing deadline while unfinished; purge time once terminal."""
        if self.finished_at is not None:
            return self.finished_at + timedelta(seconds=self.retention)
        return self.deadline

    def status(self, *, expose_tech_info: bool = False) -> JobStatus:
        """The public view; the traceback is left out unless `expose_tech_info`."""
        error = self.error
        if error is not None and error.tech_info is not None and not expose_tech_info:
            error = msgspec.structs.replace(error, tech_info=None)
        return JobStatus(
            id=self.id,
            kind=self.kind,
            state=self.state,
            stop_requested=self.stop_requested,
            progress=self.progress,
            error=error,
            result_size=self.result_size,
            result_mime=self.result_mime,
            attempt=self.attempt,
            key=self.key,
            proc_routing=self.proc_routing,
            callback_routing=self.callback_routing,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            expires_at=self.expires_at,
            not_before=self.not_before,
            parent_id=self.parent_id,
            trigger=self.trigger,
            owner=self.owner,
            steps=self.steps,
            compensation_id=self.compensation_id,
            version=self.version,
        )


def encode_job(job: Job) -> bytes:
    """Encode a record for storage."""
    return _ENCODER.encode(job)


def decode_job(data: bytes | str) -> Job:
    """Decode a stored record."""
    return _JOB_DECODER.decode(data)


def json_value(raw: msgspec.Raw) -> Any:
    """The decoded JSON value of raw content (for handlers that take plain JSON)."""
    return msgspec.json.decode(raw)


_ENCODER = msgspec.json.Encoder()
_JOB_DECODER = msgspec.json.Decoder(Job)
