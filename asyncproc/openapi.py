"""The OpenAPI 3.1 document of every route, generated from the declared operations.

Every body and answer is a msgspec type the server decodes or encodes (the schemas
come from `msgspec.json.schema_components` over them, constraints included), and
every query and path parameter is the `apidoc.Param` its handler reads. The core
routes are declared here, each kind's six calls from its content type, and the
plugins' routes by the plugins themselves (`Registry.document`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import msgspec

from .api import (
    DOWNLOAD,
    JOB_ID,
    KEY,
    LIST_PARAMS,
    SINCE,
    WAIT,
    BatchAnswer,
    BatchBody,
    IdRequest,
    JobList,
    KeyContext,
    KindInfo,
    ProgressRequest,
    Released,
    ReleaseRequest,
)
from .apidoc import JSON, Answer, ErrorBody, ErrorDetail, Operation, Param
from .model import JobStatus
from .registry import JobKind, Registry
from .service import ENQUEUE_RULES, EnqueueRequest

__all__ = [
    "ERROR",
    "ERRORS",
    "ERROR_ANSWERS",
    "STATUS",
    "BackendHealth",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "answer",
    "core_operations",
    "json_content",
    "kind_operations",
    "openapi_document",
    "ref",
    "with_content",
]

REF = "#/components/schemas/{name}"

# The errors a call may answer beside its own answers (API.md section 5, 16).
ERROR_ANSWERS: dict[int, str] = {
    400: "The body is not JSON, is nested deeper than 64 levels, or is not an object with "
    "the required fields",
    404: "Unknown kind, job or route",
    413: "The body is over `max_body` bytes",
    415: "A body whose Content-Type is not application/json",
    422: "A value breaks its type or format; the message names it",
    431: "Request headers over 64 KiB in all",
    503: "A backend did not answer, the queue is over its depth limit, or the node is "
    "shutting down; `Retry-After` says when to try again",
}
WITH_BODY = (400, 413, 415, 422, 431, 503)
NO_BODY = (431, 503)
WITH_PARAMS = (422, 431, 503)

HTML = "text/html"
EVENT_STREAM = "text/event-stream"


class BackendHealth(msgspec.Struct, frozen=True, omit_defaults=True):
    """One backend's health: its name, whether it answered, and why not."""

    name: str
    ok: bool
    error: str | None = None


class Health(msgspec.Struct, frozen=True):
    """`GET /health`: `ok` when every backend answers, else `unavailable` (503)."""

    status: Literal["ok", "unavailable"]
    role: str
    backends: dict[str, BackendHealth]


# -- raw path items (`hooks.openapi_paths`), for plugins that write theirs by hand ---------
# Prefer `Registry.document(Operation(...))`: its parameters are the ones the handler reads.


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI `content` map of one JSON schema."""
    return {JSON: {"schema": schema}}


def ref(name: str) -> dict[str, Any]:
    """A `$ref` to the component `name` (a Struct listed in `hooks.openapi_types`)."""
    return {"$ref": REF.format(name=name)}


def answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response object, with a JSON body of `schema` if given."""
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = json_content(schema)
    return out


STATUS = ref("JobStatus")
ERROR = ref("ErrorBody")
ERRORS = {str(code): answer(text, ERROR) for code, text in ERROR_ANSWERS.items()}


def _status(description: str, **more: Any) -> Answer:
    return Answer(description, JobStatus, **more)


LOCATION = {"Location": "The job's URL: `/api/jobs/{id}`"}
NOT_FOUND_JOB = Answer("Unknown job (or purged after its retention, or of another kind)", ErrorBody)
STOPPED = {
    200: _status("Queued (now stopped) or already stopped: the status"),
    202: _status("Running: stop requested; the status"),
    409: _status("Already succeeded or failed: the status"),
    404: NOT_FOUND_JOB,
}
RESULT = {
    200: Answer(
        "The result bytes, with the result's MIME type as Content-Type",
        media="*/*",
        schema={},
        headers={"Content-Disposition": "`attachment` with `download`, or for active content"},
    ),
    204: Answer("Succeeded with no result"),
    409: _status("Not succeeded: the status (a failed job's carries `error`)"),
    404: NOT_FOUND_JOB,
}
PAGE = Answer("The web page (it routes itself)", media=HTML, schema={"type": "string"})


def _event_schema(status_ref: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event: a status (`message`), or `gone` when the job is purged."""
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "event": {"const": "message"},
                    "id": {"type": "string", "description": "The status's version"},
                    "data": {
                        "type": "string",
                        "contentMediaType": JSON,
                        "contentSchema": status_ref,
                    },
                },
            },
            {
                "type": "object",
                "required": ["data"],
                "properties": {"event": {"const": "gone"}, "data": {"const": "{}"}},
            },
        ]
    }


def core_operations(registry: Registry) -> list[Operation]:
    """The routes of API.md sections 2, 5 and 6 that are not per kind."""
    kinds = tuple(kind.name for kind in registry)
    kind_type: Any = Literal[kinds] if kinds else str
    key_kind = Param("kind", "path", kind_type, "A registered kind")
    # The page and /health: no backend, no parameter to refuse, open to anyone.
    page: dict[str, Any] = {"errors": (431,), "common": False}
    return [
        Operation(
            "GET",
            "/api/jobs",
            "Jobs, newest first (ties by id), paged by cursor",
            "jobs",
            {
                200: Answer("A page of jobs", JobList),
                400: Answer("A cursor this service did not hand out", ErrorBody),
            },
            params=LIST_PARAMS,
        ),
        Operation(
            "GET",
            "/api/jobs/{id}",
            "The status; with `wait`, a long poll for a version above `since`",
            "jobs",
            {200: _status("The status"), 404: NOT_FOUND_JOB},
            params=[JOB_ID, WAIT, SINCE],
        ),
        Operation("POST", "/api/jobs/{id}/stop", "Stop the job", "jobs", STOPPED, [JOB_ID]),
        Operation(
            "GET",
            "/api/jobs/{id}/result",
            "The result bytes",
            "jobs",
            RESULT,
            params=[JOB_ID, DOWNLOAD],
        ),
        Operation(
            "GET",
            "/api/jobs/{id}/events",
            "Server-sent events: the status now and after each change, until terminal",
            "jobs",
            {
                200: Answer(
                    "One `data:` line of status JSON per change (`id:` its version), the "
                    "current status first; `: keep-alive` comments every 15 s; the stream "
                    "ends after a terminal state (an `event: gone` if the job is purged)",
                    media=EVENT_STREAM,
                    schema=_event_schema({"$ref": REF.format(name="JobStatus")}),
                ),
                404: NOT_FOUND_JOB,
            },
            params=[JOB_ID],
        ),
        Operation(
            "GET",
            "/api/keys/{kind}/{key}",
            "A key's context: its rule, holder and 20 most recent jobs",
            "jobs",
            {200: Answer("The key's context", KeyContext), 404: Answer("Unknown kind", ErrorBody)},
            params=[key_kind, KEY],
        ),
        Operation(
            "GET",
            "/api/kinds",
            "The registered kinds and their content schemas",
            "kinds",
            {200: Answer("The kinds", list[KindInfo])},
        ),
        Operation(
            "GET",
            "/health",
            "This node's health",
            "service",
            {
                200: Answer("Every backend answers", Health),
                503: Answer("A backend it needs is unreachable", Health),
            },
            **page,
        ),
        Operation(
            "GET",
            "/openapi.json",
            "This document",
            "service",
            {200: Answer("OpenAPI 3.1", dict[str, Any])},
            **page,
        ),
        Operation("GET", "/", "The progress page", "page", {200: PAGE}, **page),
        Operation(
            "GET",
            "/jobs/{id}",
            "The page, on one job",
            "page",
            {200: PAGE},
            params=[Param("id", "path", str)],
            **page,
        ),
        Operation("GET", "/new", "The page, on a new job", "page", {200: PAGE}, **page),
        Operation("GET", "/schedules", "The page, on the schedules", "page", {200: PAGE}, **page),
        Operation(
            "GET", "/dead-letters", "The page, on the dead letters", "page", {200: PAGE}, **page
        ),
    ]


def with_content(base: Any, content: Any, name: str) -> Any:
    """A copy of the body Struct `base` (camelCase fields, `content: msgspec.Raw`) named
    `name`, whose `content` is of the type `content`: the document shows what the
    handler checks the raw content against."""
    fields: list[Any] = []
    for field in msgspec.structs.fields(base):
        if field.name == "content":
            fields.append((field.name, content))
        elif field.required:
            fields.append((field.name, field.type))
        else:
            fields.append((field.name, field.type, field.default))
    body = msgspec.defstruct(name, fields, rename="camel", frozen=True)
    body.__doc__ = base.__doc__
    return body


def enqueue_body(kind: JobKind) -> Any:
    """The enqueue body of `kind`: `EnqueueRequest` with the kind's content type (one
    Struct per kind, named `<kind>.enqueue`)."""
    body = with_content(EnqueueRequest, kind.content_type, f"{kind.name}.enqueue")
    body.__doc__ = f"The enqueue body of {kind.name}."
    return Annotated[body, msgspec.Meta(extra_json_schema=ENQUEUE_RULES)]


def kind_operations(kind: JobKind) -> list[Operation]:
    """The six calls of one kind (API.md sections 1, 6 and 10)."""
    base = f"/api/{kind.name}"
    tag = kind.name
    return [
        Operation(
            "POST",
            f"{base}/enqueue",
            f"Enqueue a {kind.name} job: {kind.title}",
            tag,
            {
                202: _status("Queued: the new job's status", headers=LOCATION),
                200: _status("`requestId` (or the key's holder under `existing`) names a job"),
                409: Answer("`requestId` of another kind, or the key is held", ErrorBody),
            },
            body=enqueue_body(kind),
            description=kind.description,
        ),
        Operation(
            "POST",
            f"{base}/enqueue-batch",
            f"Enqueue many {kind.name} jobs: one outcome per item",
            tag,
            {200: Answer("One outcome per item, in order", BatchAnswer)},
            body=BatchBody,
            description=(
                f"Each item is an enqueue body of {kind.name} (`{kind.name}.enqueue`); an "
                "item that is not a valid one is refused on its own (`outcome: refused`)."
            ),
        ),
        Operation(
            "POST",
            f"{base}/progress",
            "The status; with `wait`, a long poll for a version above `since`",
            tag,
            {200: _status("The status"), 404: NOT_FOUND_JOB},
            body=ProgressRequest,
        ),
        Operation("POST", f"{base}/stop", "Stop the job", tag, STOPPED, body=IdRequest),
        Operation("POST", f"{base}/result", "The result bytes", tag, RESULT, body=IdRequest),
        Operation(
            "POST",
            f"{base}/release",
            "Free a `once` key",
            tag,
            {200: Answer("Whether the key was held", Released)},
            body=ReleaseRequest,
        ),
    ]


class _Types:
    """The msgspec types of a document, each given its schema (a `$ref` for Structs)."""

    def __init__(self) -> None:
        self.types: list[Any] = []
        self.schemas: list[dict[str, Any]] = []

    def add(self, type_: Any) -> None:
        if type_ is not None and type_ not in self.types:
            self.types.append(type_)

    def resolve(self) -> dict[str, Any]:
        """Make the schemas; answer the components."""
        refs, components = msgspec.json.schema_components(self.types, ref_template=REF)
        self.schemas = list(refs)
        return components

    def schema(self, type_: Any) -> dict[str, Any]:
        return self.schemas[self.types.index(type_)]


def _parameter(param: Param, types: _Types) -> dict[str, Any]:
    schema = types.schema(param.value_type)
    description = param.description
    if param.empty_is_absent:
        # `?limit=` is no limit: the document says so rather than call it invalid.
        schema = {"anyOf": [schema, {"const": ""}]}
        description += " (empty: as if not given)"
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "schema": schema,
    }
    if description:
        out["description"] = description.strip()
    return out


def _answer(answer: Answer, types: _Types) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.type is not None:
        out["content"] = {answer.media: {"schema": types.schema(answer.type)}}
    elif answer.schema is not None:
        out["content"] = {answer.media: {"schema": dict(answer.schema)}}
    if answer.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in answer.headers.items()
        }
    return out


def _errors(operation: Operation) -> Sequence[int]:
    if operation.errors is not None:
        return operation.errors
    if operation.body is not None or operation.bodies:
        return WITH_BODY
    return WITH_PARAMS if operation.params else NO_BODY


def _operation(operation: Operation, types: _Types, common: dict[int, Answer]) -> dict[str, Any]:
    answers: dict[int, Answer] = {
        code: Answer(ERROR_ANSWERS[code], ErrorBody) for code in _errors(operation)
    }
    if operation.common:
        answers.update(common)
    answers.update(operation.answers)
    out: dict[str, Any] = {"summary": operation.summary, "tags": [operation.tag]}
    if operation.description:
        out["description"] = operation.description
    if operation.params:
        out["parameters"] = [_parameter(p, types) for p in operation.params]
    content = {media: {"schema": dict(schema)} for media, schema in operation.bodies.items()}
    if operation.body is not None:
        content[JSON] = {"schema": types.schema(operation.body)}
    if content:
        out["requestBody"] = {"required": True, "content": content}
    out["responses"] = {str(code): _answer(answers[code], types) for code in sorted(answers)}
    return out


def _types_of(operations: Iterable[Operation], common: dict[int, Answer]) -> _Types:
    types = _Types()
    types.add(ErrorBody)
    for operation in operations:
        types.add(operation.body)
        for param in operation.params:
            types.add(param.value_type)
        for answer in [*operation.answers.values(), *common.values()]:
            types.add(answer.type)
    return types


def openapi_document(registry: Registry) -> dict[str, Any]:
    """A complete OpenAPI 3.1 document of the routes of a node with `registry`."""
    hooks = registry.hooks
    operations = core_operations(registry)
    for kind in registry:
        operations += kind_operations(kind)
    operations += hooks.openapi_operations
    common = dict(hooks.openapi_answers)
    types = _types_of(operations, common)
    for extra in hooks.openapi_types:  # the Structs of hand-written `openapi_paths`
        types.add(extra)
    components = types.resolve()
    paths: dict[str, Any] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, types, common
        )
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
