"""MyLab.AsyncProcessor API v2's bodies and messages, and how a job maps onto them.

Pure functions of a job record (and its result bytes): the request status, the request
details, the callback message of a change, the queue message of a new job. The
mapping (README "Coming from MyLab.AsyncProcessor"):

| asyncproc | MyLab |
|---|---|
| queued (a retrying job too) | pending |
| running | processing |
| succeeded, failed, stopped | completed (`successful` only for succeeded) |
| failed | `error` from the job's error (`errorId` `timeout` for a timed-out job) |
| stopped | `error` `{"errorId": "stopped", "bizMgs": ...}` |

Absent values are left out of the answers (the C# client reads a missing field as its
default, and MyLab's schemas type them as strings, not nulls); `processStep` and
`successful` are always there.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from asyncproc.model import ErrorInfo, Job, JobState
from asyncproc.service import CallbackRouting, RequestId, RoutingName

__all__ = [
    "CallbackMessage",
    "CreateRequest",
    "ProcessingError",
    "QueueMessage",
    "RequestDetails",
    "RequestStatus",
    "callback_message",
    "error_info",
    "is_json",
    "process_step",
    "request_details",
    "request_status",
]

# What MyLab has no word for: a stopped request completes unsuccessfully with this error.
STOPPED_ERROR_ID = "stopped"
STOPPED_BIZ_MSG = "The request was stopped."
# The `errorId` of a processor's `PUT .../status/error` that names none (MyLab's SDK never does).
DEFAULT_ERROR_ID = "processing_error"


class CreateRequest(msgspec.Struct, frozen=True, rename="camel"):
    """The body of `POST /requests` (MyLab's CreateRequest), in the formats of our
    enqueue (API.md section 1; MyLab's ids are 32-hex Guids, which fit)."""

    content: msgspec.Raw
    request_id: RequestId | None = None
    proc_routing: RoutingName | None = None
    callback_routing: CallbackRouting | None = None


class ProcessingError(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """MyLab's ProcessingError: the body of `PUT .../status/error` and the `error` of a
    status or callback message."""

    biz_mgs: str | None = None
    tech_mgs: str | None = None
    tech_info: str | None = None
    error_id: str | None = None


class RequestStatus(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """MyLab's RequestStatus (`GET /requests/{id}/status`)."""

    process_step: str
    successful: bool
    biz_step: str | None = None
    error: ProcessingError | None = None
    result_size: int | None = None
    result_mime: str | None = None


class RequestDetails(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """MyLab's RequestDetails (`GET /requests/{id}?include_resp=`)."""

    id: str
    status: RequestStatus
    res_obj: msgspec.Raw | None = None
    res_bin: str | None = None


class CallbackMessage(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """MyLab's callback message: what changed (`newProcStep` capitalised, as MyLab's)."""

    req_id: str
    new_proc_step: str | None = None
    new_biz_step: str | None = None
    error: ProcessingError | None = None
    res_obj: msgspec.Raw | None = None
    res_bin: str | None = None


class QueueMessage(msgspec.Struct, frozen=True):
    """MyLab's queue message: the request id and its content (the JSON itself)."""

    id: str
    content: msgspec.Raw


def process_step(state: JobState) -> str:
    """MyLab's processStep of a job state."""
    if state is JobState.QUEUED:
        return "pending"
    if state is JobState.RUNNING:
        return "processing"
    return "completed"


def processing_error(job: Job, *, expose_tech_info: bool) -> ProcessingError | None:
    """The MyLab error of a completed, unsuccessful job (None for any other)."""
    if job.state is JobState.STOPPED:
        return ProcessingError(biz_mgs=STOPPED_BIZ_MSG, error_id=STOPPED_ERROR_ID)
    if job.state is not JobState.FAILED:
        return None
    error = job.error or ErrorInfo()
    return ProcessingError(
        biz_mgs=error.biz_msg,
        tech_mgs=error.tech_msg,
        tech_info=error.tech_info if expose_tech_info else None,
        error_id=error.error_id,
    )


def error_info(error: ProcessingError) -> ErrorInfo:
    """The job error a processor's ProcessingError makes."""
    return ErrorInfo(
        error_id=error.error_id or DEFAULT_ERROR_ID,
        biz_msg=error.biz_mgs,
        tech_msg=error.tech_mgs,
        tech_info=error.tech_info,
    )


def request_status(job: Job, *, expose_tech_info: bool) -> RequestStatus:
    """The MyLab status of `job`."""
    has_result = job.result_size is not None
    return RequestStatus(
        process_step=process_step(job.state),
        successful=job.state is JobState.SUCCEEDED,
        biz_step=job.progress.biz_step,
        error=processing_error(job, expose_tech_info=expose_tech_info),
        result_size=job.result_size if has_result else None,
        result_mime=job.result_mime if has_result else None,
    )


def result_fields(mime: str | None, data: bytes | None) -> dict[str, Any]:
    """`res_obj` (a JSON result, as it is) or `res_bin` (other bytes, base64)."""
    if data is None:
        return {}
    if is_json(mime):
        return {"res_obj": msgspec.Raw(data)}
    return {"res_bin": base64.b64encode(data).decode("ascii")}


def is_json(mime: str | None) -> bool:
    """Whether a result type is JSON (`application/json`, parameters aside)."""
    return (mime or "").split(";")[0].strip().lower() == "application/json"


def request_details(job: Job, result: bytes | None, *, expose_tech_info: bool) -> RequestDetails:
    """The MyLab details of `job`, with its result when `result` is given."""
    status = request_status(job, expose_tech_info=expose_tech_info)
    return RequestDetails(id=job.id, status=status, **result_fields(job.result_mime, result))


def callback_message(
    before: Job | None, after: Job, result: bytes | None, *, expose_tech_info: bool
) -> CallbackMessage | None:
    """MyLab's callback message for a change (None: MyLab tells nothing of it).

    MyLab tells a new processStep (its first one, pending, is not told: the client has
    just created the request) and a new bizStep; a completion carries the error, or the
    result (`result`) when there is one.
    """
    if before is None:
        return None
    new_step = process_step(after.state) if before.state != after.state else None
    biz_step = after.progress.biz_step
    new_biz = biz_step if biz_step is not None and biz_step != before.progress.biz_step else None
    if new_step is None and new_biz is None:
        return None
    fields: dict[str, Any] = {}
    if new_step == "completed":
        fields = result_fields(after.result_mime, result)
        error = processing_error(after, expose_tech_info=expose_tech_info)
        if error is not None:
            if error.error_id is None:
                error = msgspec.structs.replace(error, error_id=DEFAULT_ERROR_ID)
            fields["error"] = error
    return CallbackMessage(
        req_id=after.id,
        new_proc_step=new_step.capitalize() if new_step is not None else None,
        new_biz_step=new_biz,
        **fields,
    )
