"""The exception tree of asyncproc.

    AsyncProcError
    ├── ConfigError            a setting is missing or malformed
    ├── PluginError            a plugin cannot be loaded or registers a bad kind
    ├── BackendUnavailable     a StateStore or Queue server cannot be reached   -> 503
    ├── TransitionRefused      the lifecycle refuses an event in the job's state
    ├── ServiceError           a request the service refuses (API status codes)
    │   ├── BadRequest         400  body is not JSON, nested too deep, or misses a field
    │   ├── Unauthorized       401  no token, or one the server does not know
    │   ├── Forbidden          403  the token lacks the call's scope
    │   ├── CrossOriginRefused 403  a page of another origin asks for a change
    │   ├── NotFound           404  unknown kind, job or route
    │   │   ├── UnknownKind
    │   │   └── JobNotFound
    │   ├── MethodNotAllowed   405
    │   ├── Conflict           409
    │   │   ├── RequestIdConflict
    │   │   ├── KeyConflict
    │   │   ├── LeaseLost      an external processor's token lost its lease or attempt
    │   │   ├── NotStopping    `stopped` reported for a job nobody asked to stop
    │   │   └── JobStateConflict   answered with the job's status, not an error body
    │   ├── BodyTooLarge       413
    │   ├── UnsupportedMediaType  415  a JSON call's body has another Content-Type
    │   ├── InvalidInput       422  a field breaks its schema
    │   │   └── InvalidContent 422  content fails its kind's schema or check
    │   ├── HeadersTooLarge    431  request headers over 64 KiB in all
    │   └── Overloaded         503  the queue is over its depth limit
    ├── JobError               raised by a handler: fails the job with these fields
    │   └── RetryableJobError  raised by a handler: run the job again if retries are left
    ├── JobStopped             raised inside a handler by `ctx.raise_if_stopped()`
    └── ApiError               raised by `asyncproc.client` when the server answers non-2xx

The API maps `ServiceError` and `BackendUnavailable` to answers in one place
(`api.py`, Starlette exception handlers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .messages import state_phrase

if TYPE_CHECKING:
    from .model import Job, JobStatus


class AsyncProcError(Exception):
    """Base class of every exception asyncproc raises."""


class ConfigError(AsyncProcError):
    """Raised when a setting is missing or malformed; names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class PluginError(AsyncProcError):
    """Raised when a plugin module cannot be imported or registers a bad kind."""


class BackendUnavailable(AsyncProcError):
    """Raised when a backend server (Redis, RabbitMQ) cannot be reached."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend} unavailable: {detail}")
        self.backend = backend
        self.detail = detail


class TransitionRefused(AsyncProcError):
    """Raised when the lifecycle refuses an event in the job's current state."""

    def __init__(self, job: Job, event: str) -> None:
        super().__init__(f"{event} refused for job {job.id} in state {job.state}")
        self.job = job
        self.event = event


class ServiceError(AsyncProcError):
    """Raised when the service refuses a request; carries the HTTP answer."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The error body of API.md section 5."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(ServiceError):
    """Raised when a body is not JSON or misses a required field."""


class Unauthorized(ServiceError):
    """Raised when a call needs a bearer token and has none the server knows."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """Raised when the caller's token lacks the scope a call needs."""

    status_code = 403
    code = "forbidden"


class CrossOriginRefused(ServiceError):
    """Raised when a browser page of another origin (not in `cors_origins`) asks for a
    change (any method but GET, HEAD and OPTIONS)."""

    status_code = 403
    code = "cross_origin"


class NotFound(ServiceError):
    """Raised when a route, kind or job does not exist."""

    status_code = 404
    code = "not_found"


class UnknownKind(NotFound):
    """Raised when no job kind has this name."""

    code = "unknown_kind"


class JobNotFound(NotFound):
    """Raised when a job id is unknown, purged or of another kind."""

    code = "job_not_found"


class MethodNotAllowed(ServiceError):
    """Raised when a route exists but not for this HTTP method."""

    status_code = 405
    code = "method_not_allowed"


class Conflict(ServiceError):
    """Raised when a request conflicts with the stored state."""

    status_code = 409
    code = "conflict"


class RequestIdConflict(Conflict):
    """Raised when a requestId names a job of another kind."""

    code = "request_id_conflict"


class KeyConflict(Conflict):
    """Raised when a kind's uniqueness rule refuses another job for a key."""

    code = "key_conflict"


class LeaseLost(Conflict):
    """Raised when an external processor's token no longer holds its job: the lease
    lapsed, or the job moved on (finished, stopped, taken back and started again)."""

    code = "lease_lost"


class NotStopping(Conflict):
    """Raised when a processor confirms a stop that nobody requested."""

    code = "not_stopping"


class JobStateConflict(Conflict):
    """Raised when stop or result does not fit the job's state; answered with its status."""

    code = "state_conflict"

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} {state_phrase(job.state)}")
        self.job = job


class BodyTooLarge(ServiceError):
    """Raised when a request body is over `max_body`."""

    status_code = 413
    code = "body_too_large"


class UnsupportedMediaType(ServiceError):
    """Raised when a call that takes a JSON body gets another `Content-Type` (or none)."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ServiceError):
    """Raised when content or a field breaks its schema or the kind's pre-start check."""

    status_code = 422
    code = "invalid"


class InvalidContent(InvalidInput):
    """Raised when a job's content fails its kind's schema or pre-start check."""

    code = "invalid_content"


class HeadersTooLarge(ServiceError):
    """Raised when a request's headers are over 64 KiB in all (answered before routing)."""

    status_code = 431
    code = "headers_too_large"


class Overloaded(ServiceError):
    """Raised when the queue is over its depth limit; nothing was stored."""

    status_code = 503
    code = "overloaded"


class JobError(AsyncProcError):
    """Raised by a handler to fail its job with a message for the user.

    `biz_msg` is shown to the user, `tech_msg` is the technical message,
    `error_id` a stable literal a client can match on.
    """

    def __init__(
        self,
        biz_msg: str | None = None,
        *,
        tech_msg: str | None = None,
        error_id: str = "failed",
    ) -> None:
        super().__init__(tech_msg or biz_msg or error_id)
        self.biz_msg = biz_msg
        self.tech_msg = tech_msg
        self.error_id = error_id


class RetryableJobError(JobError):
    """Raised by a handler when another attempt may succeed (the kind's `retries`)."""


class JobStopped(AsyncProcError):
    """Raised by `ctx.raise_if_stopped()` when the job was asked to stop or ran out of time."""


class ApiError(AsyncProcError):
    """Raised by `asyncproc.client` when the server answers with an error (non-2xx).

    `code` is the literal of API.md section 5 (`state_conflict` for the 409 answers
    of stop and result, which carry the job's `status` instead of an error body),
    `detail` the rest of the error body (such as `jobId`), `retry_after` the
    seconds a 503 asks to wait.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        status: JobStatus | None = None,
        detail: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail or {}
        self.retry_after = retry_after
