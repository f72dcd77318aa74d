"""The OpenAPI 3.1 document of every route, built from the registered kinds."""

from __future__ import annotations

from typing import Any

import msgspec

from .model import JobStatus
from .registry import Registry

__all__ = ["ERROR", "ERRORS", "STATUS", "answer", "json_content", "openapi_document", "ref"]

REF = "#/components/schemas/{name}"


class ErrorDetail(msgspec.Struct):
    """What went wrong: a stable code and a readable message."""

    code: str
    message: str


class ErrorBody(msgspec.Struct):
    """Every non-2xx body (but the 409 of stop and result)."""

    error: ErrorDetail


class JobList(msgspec.Struct):
    """A page of jobs and the cursor of the next page."""

    items: list[JobStatus]
    next: str | None


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = json_content(schema)
    return out


STATUS = ref("JobStatus")
ERROR = ref("ErrorBody")
ERRORS = {
    "400": answer("Body is not JSON, is nested deeper than 64 levels, or misses a field", ERROR),
    "404": answer("Unknown kind or job", ERROR),
    "413": answer("Body over the size limit", ERROR),
    "415": answer("A body whose Content-Type is not application/json", ERROR),
    "422": answer("A value breaks its schema", ERROR),
    "431": answer("Request headers over 64 KiB in all", ERROR),
    "503": answer("A backend is unreachable or the queue is full", ERROR),
}
ID_BODY = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string"}},
}
PATH_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
ON_CONFLICT = {"type": "string", "enum": ["reject", "existing", "replace"]}


class BatchItem(msgspec.Struct):
    """One item's outcome: `created`, `existing` (with the status) or `refused` (with the error)."""

    outcome: str
    status: JobStatus | None
    error: ErrorDetail | None


class BatchAnswer(msgspec.Struct):
    """The answer of enqueue-batch and of an event: one outcome per item."""

    items: list[BatchItem]


class KeyContext(msgspec.Struct):
    """A key's rule, the job holding it, and its recent jobs."""

    kind: str
    key: str
    rule: str
    holder: JobStatus | None
    jobs: list[JobStatus]


def _post(summary: str, body: dict[str, Any], answers: dict[str, Any], tag: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "tags": [tag],
            "requestBody": {"required": True, "content": json_content(body)},
            "responses": {**answers, **ERRORS},
        }
    }


def _kind_paths(kind_name: str, content_ref: dict[str, Any]) -> dict[str, Any]:
    enqueue_body = {
        "type": "object",
        "required": ["content"],
        "properties": {
            "content": content_ref,
            "requestId": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
            "key": {"type": "string", "minLength": 1, "maxLength": 256},
            "procRouting": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "callbackRouting": {"type": "string", "minLength": 1, "maxLength": 255},
            "onConflict": ON_CONFLICT,
        },
    }
    batch_body = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": enqueue_body, "minItems": 1, "maxItems": 1000},
            "keys": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 256},
                "minItems": 1,
                "maxItems": 1000,
            },
            "content": content_ref,
            "onConflict": ON_CONFLICT,
        },
    }
    progress_body = {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "string"},
            "wait": {"type": "number", "minimum": 0, "maximum": 60},
            "since": {"type": "integer"},
        },
    }
    release_body = {
        "type": "object",
        "required": ["key"],
        "properties": {"key": {"type": "string"}},
    }
    base = f"/api/{kind_name}"
    return {
        f"{base}/enqueue": _post(
            f"Enqueue a {kind_name} job",
            enqueue_body,
            {
                "202": answer("Queued", STATUS),
                "200": answer("requestId exists: its status", STATUS),
                "409": answer("requestId of another kind, or key held", ERROR),
            },
            kind_name,
        ),
        f"{base}/enqueue-batch": _post(
            f"Enqueue many {kind_name} jobs: one outcome per item",
            batch_body,
            {"200": answer("One outcome per item, in order", ref("BatchAnswer"))},
            kind_name,
        ),
        f"{base}/progress": _post(
            "Status, optionally waiting for the next change",
            progress_body,
            {"200": answer("Status", STATUS)},
            kind_name,
        ),
        f"{base}/stop": _post(
            "Stop the job",
            ID_BODY,
            {
                "200": answer("Stopped", STATUS),
                "202": answer("Running: stop requested", STATUS),
                "409": answer("Already succeeded or failed", STATUS),
            },
            kind_name,
        ),
        f"{base}/result": _post(
            "The result bytes, with their MIME type",
            ID_BODY,
            {
                "200": {"description": "The result", "content": {"*/*": {"schema": {}}}},
                "204": answer("Succeeded with no result"),
                "409": answer("Not succeeded", STATUS),
            },
            kind_name,
        ),
        f"{base}/release": _post(
            "Free a `once` key",
            release_body,
            {"200": answer("Released or not", {"type": "object"})},
            kind_name,
        ),
    }


def _alias_paths() -> dict[str, Any]:
    wait_params = [
        *PATH_ID,
        {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 60}},
        {"name": "since", "in": "query", "schema": {"type": "integer"}},
    ]
    list_params = [
        {"name": name, "in": "query", "schema": {"type": "string"}}
        for name in ("kind", "state", "key", "parent", "cursor")
    ] + [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}]
    return {
        "/api/jobs": {
            "get": {
                "summary": "Jobs, newest first, paged by cursor",
                "tags": ["jobs"],
                "parameters": list_params,
                "responses": {"200": answer("A page", ref("JobList")), **ERRORS},
            }
        },
        "/api/jobs/{id}": {
            "get": {
                "summary": "Status (long poll with wait and since)",
                "tags": ["jobs"],
                "parameters": wait_params,
                "responses": {"200": answer("Status", STATUS), **ERRORS},
            }
        },
        "/api/jobs/{id}/stop": {
            "post": {
                "summary": "Stop the job",
                "tags": ["jobs"],
                "parameters": PATH_ID,
                "responses": {
                    "200": answer("Stopped", STATUS),
                    "202": answer("Running: stop requested", STATUS),
                    "409": answer("Already succeeded or failed", STATUS),
                    **ERRORS,
                },
            }
        },
        "/api/jobs/{id}/result": {
            "get": {
                "summary": "The result bytes",
                "tags": ["jobs"],
                "parameters": [
                    *PATH_ID,
                    {"name": "download", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "The result", "content": {"*/*": {"schema": {}}}},
                    "204": answer("Succeeded with no result"),
                    "409": answer("Not succeeded", STATUS),
                    **ERRORS,
                },
            }
        },
        "/api/jobs/{id}/events": {
            "get": {
                "summary": "Server-sent events: the status after each change",
                "tags": ["jobs"],
                "parameters": PATH_ID,
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **ERRORS,
                },
            }
        },
        "/api/keys/{kind}/{key}": {
            "get": {
                "summary": "A key's context: its rule, holder and recent jobs",
                "tags": ["jobs"],
                "parameters": [
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                    for name in ("kind", "key")
                ],
                "responses": {"200": answer("The key's context", ref("KeyContext")), **ERRORS},
            }
        },
        "/api/kinds": {
            "get": {
                "summary": "The registered kinds and their content schemas",
                "tags": ["kinds"],
                "responses": {
                    "200": answer("Kinds", {"type": "array", "items": {"type": "object"}})
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Node health",
                "tags": ["service"],
                "responses": {
                    "200": answer("Healthy", {"type": "object"}),
                    "503": answer("A backend is unreachable", {"type": "object"}),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["service"],
                "responses": {"200": answer("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/": {
            "get": {
                "summary": "The progress page",
                "tags": ["service"],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
    }


def openapi_document(registry: Registry) -> dict[str, Any]:
    """A complete OpenAPI 3.1 document for the kinds of `registry`."""
    kinds = list(registry)
    hooks = registry.hooks
    base: list[Any] = [JobStatus, ErrorBody, JobList, BatchAnswer, KeyContext]
    base += [t for t in hooks.openapi_types if t not in base]
    types = base + [k.content_type for k in kinds]
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    paths = _alias_paths()
    for kind, content_ref in zip(kinds, refs[len(base) :], strict=True):
        paths.update(_kind_paths(kind.name, content_ref))
    # Plugins' routes (schedules, triggers, ...): `$ref`s name the Structs above.
    paths.update(hooks.openapi_paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "asyncproc",
            "version": "1",
            "description": "Long operations behind a REST API, with progress and stop.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
