"""Built-in plugin: a job's input, for the page (and any client that lost it).

Route: `GET /api/jobs/{id}/content` → `200` with the content the job was enqueued
with, as JSON, byte for byte what the handler got; `404` for an unknown or purged
job, as the status. The status itself does not carry the content: it is sent on every
change (long poll, SSE, callbacks) and the content may be large.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import service_of
from asyncproc.registry import Registry

__all__ = ["registry"]

registry = Registry()


@registry.route("/api/jobs/{id}/content", methods=["GET"])
async def job_content(request: Request) -> Response:
    """GET /api/jobs/{id}/content: the job's input as it was enqueued."""
    job = await service_of(request).get(request.path_params["id"])
    return Response(bytes(job.content), media_type="application/json")


# Written out in full (no helper of asyncproc.openapi), so it reads the same whichever
# way the document's builder evolves.
_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
registry.hooks.openapi_paths.update(
    {
        "/api/jobs/{id}/content": {
            "get": {
                "summary": "The job's input content, as it was enqueued",
                "tags": ["jobs"],
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "The content (any JSON)",
                        "content": {"application/json": {"schema": {}}},
                    },
                    "404": {
                        "description": "Unknown job, or purged after its retention",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                    "503": {
                        "description": "The state store did not answer",
                        "content": {"application/json": {"schema": _ERROR}},
                    },
                },
            }
        }
    }
)
