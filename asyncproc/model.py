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
    "Progress",
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
