"""Built-in plugin: a job's input, for the page (and any client that lost it).

Route: `GET /api/jobs/{id}/content` → `200` with the content the job was enqueued
with, as JSON, byte for byte what the handler got; `404` for an unknown or purged
job, as the status. The status itself does not carry the content: it is sent on every
change (long poll, SSE, callbacks) and the content may be large.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import JOB_ID, service_of
from asyncproc.apidoc import Answer, ErrorBody, Operation
from asyncproc.registry import Registry

__all__ = ["registry"]

registry = Registry()


@registry.route("/api/jobs/{id}/content", methods=["GET"])
async def job_content(request: Request) -> Response:
    """GET /api/jobs/{id}/content: the job's input as it was enqueued."""
    job = await service_of(request).get(JOB_ID.read(request))
    return Response(bytes(job.content), media_type="application/json")


registry.document(
    Operation(
        "GET",
        "/api/jobs/{id}/content",
        "The job's input content, as it was enqueued",
        "jobs",
        {
            200: Answer("The content (any JSON)", schema={}),
            404: Answer("Unknown job, or purged after its retention", ErrorBody),
        },
        [JOB_ID],
    )
)
