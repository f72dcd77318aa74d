"""Built-in plugin: the HTTP calls of external processors (API.md section 14).

`POST /api/workers/take`, then per job `POST /api/workers/jobs/{id}/progress`,
`PUT /api/workers/jobs/{id}/result?token=`, `POST /api/workers/jobs/{id}/fail` and
`POST /api/workers/jobs/{id}/stopped`. The work is `asyncproc.external.ExternalJobs`;
a lifespan hook builds it with the cluster's token secret (kept in the store, so any
api node checks any token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import JOB_ID, decode_body, json_response, read_body, status_response
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.external import (
    ExternalJobs,
    FailReport,
    ProgressAnswer,
    ProgressReport,
    StoppedReport,
    TakeAnswer,
    TakeRequest,
    Token,
    cluster_secret,
)
from asyncproc.hooks import Node
from asyncproc.model import JobStatus
from asyncproc.registry import Registry

__all__ = ["registry"]

registry = Registry()

_TAG = "external processors"
_ID = JOB_ID
_TOKEN = Param("token", "query", Token, "The token `take` handed out with the job")
_LOST = {409: Answer("The token lost its lease, or its job moved on (lease_lost)", ErrorBody)}


@registry.lifespan
@asynccontextmanager
async def external_jobs(node: Node) -> AsyncIterator[None]:
    """Serve external processors on this node while it runs."""
    store = node.service.store
    node.app.state.external = ExternalJobs(
        node.service, lease=node.settings.lease, secret=lambda: cluster_secret(store)
    )
    yield


def _jobs(request: Request) -> ExternalJobs:
    jobs: ExternalJobs = request.app.state.external
    return jobs


@registry.route("/api/workers/take", methods=["POST"])
async def take(request: Request) -> Response:
    """POST /api/workers/take: jobs moved to running for the calling processor."""
    body = decode_body(await read_body(request), TakeRequest)
    return json_response(TakeAnswer(await _jobs(request).take(body)))


@registry.route("/api/workers/jobs/{id}/progress", methods=["POST"])
async def progress(request: Request) -> Response:
    """POST /api/workers/jobs/{id}/progress: report (or heartbeat), renewing the lease."""
    body = decode_body(await read_body(request), ProgressReport)
    return json_response(await _jobs(request).progress(_ID.read(request), body))


@registry.route("/api/workers/jobs/{id}/result", methods=["PUT"])
async def result(request: Request) -> Response:
    """PUT /api/workers/jobs/{id}/result?token=: the result bytes, typed by Content-Type."""
    token = _TOKEN.read(request)
    data = await read_body(request, json=False)
    mime = request.headers.get("content-type") or None
    job = await _jobs(request).succeed(_ID.read(request), token, data, mime)
    return status_response(request, job)


@registry.route("/api/workers/jobs/{id}/fail", methods=["POST"])
async def fail(request: Request) -> Response:
    """POST /api/workers/jobs/{id}/fail: failed, or queued again when retryable."""
    body = decode_body(await read_body(request), FailReport)
    return status_response(request, await _jobs(request).fail(_ID.read(request), body))


@registry.route("/api/workers/jobs/{id}/stopped", methods=["POST"])
async def stopped(request: Request) -> Response:
    """POST /api/workers/jobs/{id}/stopped: the processor stopped as asked."""
    body = decode_body(await read_body(request), StoppedReport)
    job = await _jobs(request).stopped(_ID.read(request), body.token)
    return status_response(request, job)


registry.document(
    Operation(
        "POST",
        "/api/workers/take",
        "Take jobs of external kinds (long poll up to `wait` for the first)",
        _TAG,
        {
            200: Answer("The jobs taken, now running for this processor", TakeAnswer),
            404: Answer("A kind that is not registered", ErrorBody),
        },
        body=TakeRequest,
    ),
    Operation(
        "POST",
        "/api/workers/jobs/{id}/progress",
        "Report progress or a heartbeat; renews the lease",
        _TAG,
        {200: Answer("Stop requested?, the lease's new end", ProgressAnswer), **_LOST},
        [_ID],
        body=ProgressReport,
    ),
    Operation(
        "PUT",
        "/api/workers/jobs/{id}/result",
        "The job succeeded with these result bytes (typed by Content-Type)",
        _TAG,
        {200: Answer("The job's status", JobStatus), **_LOST},
        [_ID, _TOKEN],
        bodies={"*/*": {}},
        errors=(413, 422, 431, 503),  # any type of body: no 400 or 415
    ),
    Operation(
        "POST",
        "/api/workers/jobs/{id}/fail",
        "The job failed (queued again when retryable and retries are left)",
        _TAG,
        {200: Answer("The job's status", JobStatus), **_LOST},
        [_ID],
        body=FailReport,
    ),
    Operation(
        "POST",
        "/api/workers/jobs/{id}/stopped",
        "The processor stopped the job after a stop request",
        _TAG,
        {200: Answer("The job's status", JobStatus), **_LOST},
        [_ID],
        body=StoppedReport,
    ),
)
