"""The OpenAPI paths of MyLab.AsyncProcessor API v2's routes (plugin `mylab`), under
both `/requests` and `/v2/requests`; `$ref`s name the Structs of `mylab_model`."""

from __future__ import annotations

from typing import Any

from asyncproc.openapi import ERROR, answer, json_content, ref

from .mylab_model import CreateRequest, ProcessingError, RequestDetails, RequestStatus

__all__ = ["TYPES", "paths"]

TYPES = [CreateRequest, RequestStatus, RequestDetails, ProcessingError]

_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_NOT_FOUND = {"404": answer("Unknown request (or a job of another kind)", ERROR)}
_DONE = {"200": {"description": "Done (no body)"}}
_REFUSED = {
    "409": answer(
        "The request is completed (succeeded, failed, stopped, timed out: "
        "`request_completed`), taken by a processor with a lease (`request_taken`), "
        "may not start yet (`not_startable`), or its kind has a Python handler "
        "(`not_external`)",
        ERROR,
    )
}
_TEXT_OR_JSON_STRING = {
    "text/plain": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "string"}},
}
_RESULT = {
    "application/json": {"schema": {}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}


def _call(summary: str, answers: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "tags": ["mylab"],
        "parameters": _ID,
        "responses": {**answers, **_NOT_FOUND},
        **more,
    }


def _paths(prefix: str) -> dict[str, Any]:
    return {
        prefix: {
            "post": {
                "summary": "Create a request: a job of `mylab_kind` (MyLab's CreateRequest)",
                "tags": ["mylab"],
                "requestBody": {"required": True, "content": json_content(ref("CreateRequest"))},
                "responses": {
                    "200": {
                        "description": "The request's id (also for a requestId that exists)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "400": answer("Body is not JSON or misses content", ERROR),
                    "409": answer("requestId names a job of another kind", ERROR),
                    "415": answer("A body that is not application/json", ERROR),
                    "422": answer("A value breaks its schema", ERROR),
                    "503": answer("A backend is unreachable or the queue is full", ERROR),
                },
            }
        },
        f"{prefix}/{{id}}": {
            "get": _call(
                "The request's details (with its result when include_resp=true)",
                {"200": answer("MyLab's RequestDetails", ref("RequestDetails"))},
                parameters=[
                    *_ID,
                    {"name": "include_resp", "in": "query", "schema": {"type": "boolean"}},
                ],
            )
        },
        f"{prefix}/{{id}}/status": {
            "get": _call(
                "The request's status",
                {"200": answer("MyLab's RequestStatus", ref("RequestStatus"))},
            )
        },
        f"{prefix}/{{id}}/result": {
            "get": _call(
                "The request's result bytes",
                {
                    "200": {"description": "The result", "content": _RESULT},
                    "400": answer("The request has no result (yet)", ERROR),
                },
            ),
            "put": _call(
                "Processor: the request succeeded with this result",
                {**_DONE, **_REFUSED, "415": answer("Neither JSON nor octet-stream", ERROR)},
                requestBody={"required": True, "content": _RESULT},
            ),
        },
        f"{prefix}/{{id}}/status/biz-step": {
            "put": _call(
                "Processor: the request's business step",
                {**_DONE, **_REFUSED, "415": answer("Neither text nor JSON", ERROR)},
                requestBody={"required": True, "content": _TEXT_OR_JSON_STRING},
            )
        },
        f"{prefix}/{{id}}/status/error": {
            "put": _call(
                "Processor: the request failed with this error",
                {**_DONE, **_REFUSED},
                requestBody={"required": True, "content": json_content(ref("ProcessingError"))},
            )
        },
        f"{prefix}/{{id}}/status/step/processing": {
            "post": _call(
                "Processor: the request is processing (again: no change)", _DONE | _REFUSED
            )
        },
        f"{prefix}/{{id}}/status/step/completed": {
            "post": _call("Processor: the request succeeded without a result", _DONE | _REFUSED)
        },
    }


def paths(prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The paths of every MyLab route under each of `prefixes`."""
    out: dict[str, Any] = {}
    for prefix in prefixes:
        out.update(_paths(prefix))
    return out
