"""The OpenAPI operations of MyLab.AsyncProcessor API v2's routes (plugin `mylab`), under
both `/requests` and `/v2/requests`: declared like every route (`asyncproc.apidoc`),
with the msgspec types of `mylab_model` and the parameters the handlers read."""

from __future__ import annotations

from typing import Any, Literal

from asyncproc.api import JOB_ID
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.openapi import with_content

from .mylab_model import CreateRequest, ProcessingError, RequestDetails, RequestStatus

__all__ = ["INCLUDE_RESP", "operations"]

# What `details` takes for true and false (MyLab's .NET SDK writes `True` and `False`).
Flag = Literal[
    "true", "false", "True", "False", "TRUE", "FALSE", "1", "0", "yes", "no", "Yes", "No"
]
INCLUDE_RESP = Param(
    "include_resp", "query", Flag | None, "`true`: with the result (`resObj`/`resBin`)"
)
_TAG = "mylab"
_NOT_FOUND = {404: Answer("Unknown request (or a job of another kind)", ErrorBody)}
_DONE = {200: Answer("Done (no body)")}
_REFUSED = {
    409: Answer(
        "The request is completed (succeeded, failed, stopped, timed out: "
        "`request_completed`), taken by a processor with a lease (`request_taken`), "
        "may not start yet (`not_startable`), or its kind has a Python handler "
        "(`not_external`)",
        ErrorBody,
    ),
    **_NOT_FOUND,
}
_RESULT: dict[str, Any] = {"application/json": {}, "application/octet-stream": {}}


def operations(prefixes: tuple[str, ...], content: Any) -> list[Operation]:
    """The operations of every MyLab route under each of `prefixes`; `content` is the
    content type of `mylab_kind` (what `POST /requests` checks the content against)."""
    create_body = with_content(CreateRequest, content, "mylab.CreateRequest")
    out: list[Operation] = []
    for prefix in prefixes:
        one = f"{prefix}/{{id}}"
        out += [
            Operation(
                "POST",
                prefix,
                "Create a request: a job of `mylab_kind` (MyLab's CreateRequest)",
                _TAG,
                {
                    200: Answer(
                        "The request's id (also for a requestId that exists)",
                        media="text/plain",
                        schema={"type": "string"},
                    ),
                    409: Answer("requestId names a job of another kind", ErrorBody),
                },
                body=create_body,
            ),
            Operation(
                "GET",
                one,
                "The request's details (with its result when include_resp=true)",
                _TAG,
                {200: Answer("MyLab's RequestDetails", RequestDetails), **_NOT_FOUND},
                [JOB_ID, INCLUDE_RESP],
            ),
            Operation(
                "GET",
                f"{one}/status",
                "The request's status",
                _TAG,
                {200: Answer("MyLab's RequestStatus", RequestStatus), **_NOT_FOUND},
                [JOB_ID],
            ),
            Operation(
                "GET",
                f"{one}/result",
                "The request's result bytes",
                _TAG,
                {
                    200: Answer("The result, typed by its MIME type", media="*/*", schema={}),
                    400: Answer("The request has no result (yet)", ErrorBody),
                    **_NOT_FOUND,
                },
                [JOB_ID],
            ),
            Operation(
                "PUT",
                f"{one}/result",
                "Processor: the request succeeded with this result",
                _TAG,
                {**_DONE, **_REFUSED},
                [JOB_ID],
                bodies=_RESULT,
            ),
            Operation(
                "PUT",
                f"{one}/status/biz-step",
                "Processor: the request's business step (text, or a JSON string)",
                _TAG,
                {**_DONE, **_REFUSED},
                [JOB_ID],
                body=str,
                bodies={"text/plain": {"type": "string"}},
            ),
            Operation(
                "PUT",
                f"{one}/status/error",
                "Processor: the request failed with this error",
                _TAG,
                {**_DONE, **_REFUSED},
                [JOB_ID],
                body=ProcessingError,
            ),
            Operation(
                "POST",
                f"{one}/status/step/processing",
                "Processor: the request is processing (again: no change)",
                _TAG,
                {**_DONE, **_REFUSED},
                [JOB_ID],
            ),
            Operation(
                "POST",
                f"{one}/status/step/completed",
                "Processor: the request succeeded without a result",
                _TAG,
                {**_DONE, **_REFUSED},
                [JOB_ID],
            ),
        ]
    return out
