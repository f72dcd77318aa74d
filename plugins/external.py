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
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import decode_body, json_response, read_body, status_response
from asyncproc.errors import InvalidInput
from asyncproc.external import (
    ExternalJobs,
    FailReport,
    ProgressAnswer,
    ProgressReport,
    StoppedReport,
    TakeAnswer,
    TakeRequest,
    cluster_secret,
)
from asyncproc.hooks import Node
from asyncproc.openapi import ERROR, ERRORS, STATUS, answer, json_content, ref
from asyncproc.registry import Registry

__all__ = ["registry"]

registry = Registry()


@registry.lifespan
@asynccontextmanager
async def external_jobs(node: Node) -> AsyncIterator[None]:
    """Serve external processors on this node while it runs."""
    secret = await cluster_secret(node.service.store)
    node.app.state.external = ExternalJobs(node.service, lease=node.settings.lease, secret=secret)
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
    return json_response(await _jobs(request).progress(request.path_params["id"], body))


@registry.route("/api/workers/jobs/{id}/result", methods=["PUT"])
async def result(request: Request) -> Response:
    """PUT /api/workers/jobs/{id}/result?token=: the result bytes, typed by Content-Type."""
    token = request.query_params.get("token")
    if not token:
        raise InvalidInput("query parameter token is required")
    data = await read_body(request, json=False)
    mime = request.headers.get("content-type") or None
    job = await _jobs(request).succeed(request.path_params["id"], token, data, mime)
    return status_response(request, job)


@registry.route("/api/workers/jobs/{id}/fail", methods=["POST"])
async def fail(request: Request) -> Response:
    """POST /api/workers/jobs/{id}/fail: failed, or queued again when retryable."""
    body = decode_body(await read_body(request), FailReport)
    return status_response(request, await _jobs(request).fail(request.path_params["id"], body))


@registry.route("/api/workers/jobs/{id}/stopped", methods=["POST"])
async def stopped(request: Request) -> Response:
    """POST /api/workers/jobs/{id}/stopped: the processor stopped as asked."""
    body = decode_body(await read_body(request), StoppedReport)
    job = await _jobs(request).stopped(request.path_params["id"], body.token)
    return status_response(request, job)


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_LOST = {"409": answer("The token lost its lease, or its job moved on (lease_lost)", ERROR)}


def _call(summary: str, answers: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["external processors"],
        "responses": {**answers, **ERRORS},
        **more,
    }


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": json_content(ref(name))}


registry.hooks.openapi_types += [
    TakeRequest,
    TakeAnswer,
    ProgressReport,
    ProgressAnswer,
    FailReport,
    StoppedReport,
]
registry.hooks.openapi_paths.update(
    {
        "/api/workers/take": {
            "post": _call(
                "Take jobs of external kinds (long poll up to `wait` for the first)",
                {
                    "200": answer(
                        "The jobs taken, now running for this processor", ref("TakeAnswer")
                    )
                },
                requestBody=_body("TakeRequest"),
            )
        },
        "/api/workers/jobs/{id}/progress": {
            "post": _call(
                "Report progress or a heartbeat; renews the lease",
                {
                    "200": answer("Stop requested?, the lease's new end", ref("ProgressAnswer")),
                    **_LOST,
                },
                parameters=_ID,
                requestBody=_body("ProgressReport"),
            )
        },
        "/api/workers/jobs/{id}/result": {
            "put": _call(
                "The job succeeded with these result bytes (typed by Content-Type)",
                {"200": answer("The job's status", STATUS), **_LOST},
                parameters=[
                    *_ID,
                    {
                        "name": "token",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                requestBody={
                    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}
                },
            )
        },
        "/api/workers/jobs/{id}/fail": {
            "post": _call(
                "The job failed (queued again when retryable and retries are left)",
                {"200": answer("The job's status", STATUS), **_LOST},
                parameters=_ID,
                requestBody=_body("FailReport"),
            )
        },
        "/api/workers/jobs/{id}/stopped": {
            "post": _call(
                "The processor stopped the job after a stop request",
                {"200": answer("The job's status", STATUS), **_LOST},
                parameters=_ID,
                requestBody=_body("StoppedReport"),
            )
        },
    }
)
