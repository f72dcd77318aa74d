"""Starlette routes of API.md, the error mapping, long poll and SSE.

Handlers parse the request, call `JobService`, and encode the answer; every
refusal is an exception mapped to its status code in `EXCEPTION_HANDLERS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from . import messages
from .apidoc import ErrorDetail, Param, decode_json
from .errors import (
    BackendUnavailable,
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    InvalidInput,
    JobStateConflict,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    UnsupportedMediaType,
)
from .input_limits import (
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    headers_size,
    hidden_header_names,
    is_json_media_type,
    json_too_deep,
    kept_headers,
)
from .interfaces import JobQuery
from .model import Job, JobState, JobStatus, OnConflict, Trigger, TriggerType, Uniqueness, utcnow
from .safe_answers import attachment, is_active_content
from .service import BusinessKey, EnqueueRequest, JobService

__all__ = ["EXCEPTION_HANDLERS", "api_routes"]

T = TypeVar("T")

JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Wait = Annotated[float, msgspec.Meta(ge=0, le=60)]
Limit = Annotated[int, msgspec.Meta(ge=1)]

# The query and path parameters: each handler reads its own through these, and the
# OpenAPI document shows the same types (`asyncproc.openapi`).
JOB_ID = Param("id", "path", JobId, "The job's id")
WAIT = Param(
    "wait", "query", Wait | None, "Seconds to wait for a version above `since` (long poll)"
)
SINCE = Param("since", "query", int | None, "The version to wait past; default: the current one")
DOWNLOAD = Param("download", "query", str | None, "Any value but `0` or `false`: as an attachment")
LIST_PARAMS = (
    Param("kind", "query", str | None, "Only jobs of this kind"),
    Param("state", "query", JobState | None, "Only jobs in this state"),
    Param("key", "query", str | None, "Only jobs of this business key"),
    Param("parent", "query", str | None, "Only the jobs this job started (a selection)"),
    Param("limit", "query", Limit | None, "Page size: default 50, at most 200 (more is capped)"),
    Param("cursor", "query", str | None, "The `next` of the previous page"),
)
KEY = Param("key", "path", BusinessKey, "The business key")


class IdRequest(msgspec.Struct, frozen=True):
    """Body of stop and result."""

    id: JobId


class ProgressRequest(msgspec.Struct, frozen=True):
    """Body of progress: long poll with `wait` seconds for a version above `since`."""

    id: JobId
    wait: Wait | None = None
    since: int | None = None


class ReleaseRequest(msgspec.Struct, frozen=True):
    """Body of release: the `once` key to free."""

    key: BusinessKey


class KindInfo(msgspec.Struct, frozen=True, rename="camel"):
    """One entry of `GET /api/kinds`."""

    kind: str
    title: str
    description: str
    content_schema: dict[str, Any]


class JobList(msgspec.Struct, frozen=True):
    """`GET /api/jobs`: a page of jobs, newest first, and the cursor of the next (null on
    the last)."""

    items: list[JobStatus]
    next: str | None


class Released(msgspec.Struct, frozen=True):
    """The answer of release: whether a `once` key was held and is free now."""

    kind: str
    key: str
    released: bool


class KeyContext(msgspec.Struct, frozen=True):
    """`GET /api/keys/{kind}/{key}`: the key's rule, the job holding it, its recent jobs."""

    kind: str
    key: str
    rule: Uniqueness
    holder: JobStatus | None
    jobs: list[JobStatus]


class BatchItem(msgspec.Struct, frozen=True):
    """One item's outcome: `created` or `existing` (with the job's status), or `refused`
    (with the error a single enqueue would have answered)."""

    outcome: Literal["created", "existing", "refused"]
    status: JobStatus | None
    error: ErrorDetail | None


class BatchAnswer(msgspec.Struct, frozen=True):
    """The answer of enqueue-batch: one outcome per item, in order."""

    items: list[BatchItem]


_encoder = msgspec.json.Encoder()
JSON = "application/json"


def json_response(
    value: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer encoded by msgspec."""
    return Response(_encoder.encode(value), status_code, headers, media_type=JSON)


def service_of(request: Request) -> JobService:
    """The app's JobService."""
    service: JobService = request.app.state.service
    return service


def status_response(request: Request, job: Job, status_code: int = 200) -> Response:
    """A job's public status."""
    expose = service_of(request).expose_tech_info
    return json_response(job.status(expose_tech_info=expose), status_code)


async def read_body(request: Request, *, json: bool = True) -> bytes:
    """The body, refused with 413 past `max_body` before it is all read.

    With `json` (the default: every call of API.md that takes a body takes JSON), a
    `Content-Type` other than `application/json` (or none, when a body came) answers
    415, and JSON nested deeper than 64 levels 400, before anything decodes it.
    """
    limit: int = request.app.state.settings.max_body
    # Straight from the ASGI scope (names are lower case there): cheaper than `Headers`.
    content_type: bytes | None = None
    declared: bytes | None = None
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            declared = value
    if json and content_type is not None and not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"Content-Type {content_type.decode('latin-1')!r}: this call takes application/json"
        )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body is over the limit of {limit} bytes")
    # The ASGI messages themselves: `request.stream()` is an async generator, which
    # costs more than the rest of reading a small body.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if json and body:
        if content_type is None:
            raise UnsupportedMediaType("no Content-Type: this call takes application/json")
        if json_too_deep(body):
            raise BadRequest(f"body is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def decode_body(body: bytes, type_: type[T]) -> T:
    """Parse a JSON body: 400 when it is not a JSON object with the required fields, else 422."""
    try:
        result: T = decode_json(body, type_)
        return result
    except msgspec.ValidationError as exc:  # before DecodeError: it is a subclass
        text = str(exc)
        message = messages.invalid_value(exc, type_, body)
        top_level = "$." not in text
        if top_level and text.startswith(("Expected `object`", "Object missing required field")):
            raise BadRequest(message) from None
        raise InvalidInput(message) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(messages.invalid_json(exc, body)) from None
    except RecursionError:  # a body that did not come through `read_body`
        raise BadRequest(f"body is JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


def handler_headers(request: Request) -> dict[str, str]:
    """The request's headers a handler sees: lower-case names, without `Authorization`,
    `Cookie`, `Proxy-Authorization` and the `hidden_headers` setting's names."""
    hidden = hidden_header_names(request.app.state.settings.hidden_headers)
    return kept_headers(request.scope["headers"], hidden)


# -- per-kind calls ------------------------------------------------------------


async def enqueue(request: Request) -> Response:
    """POST /api/{kind}/enqueue"""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), EnqueueRequest)
    scope = request.scope
    job, created = await service.enqueue(
        kind,
        body,
        headers=handler_headers(request),
        incoming_at=scope.get("state", {}).get("incoming_at"),
    )
    status = job.status(expose_tech_info=service.expose_tech_info)
    if not created:
        return json_response(status, 200)
    return json_response(status, 202, {"Location": f"/api/jobs/{job.id}"})


MAX_BATCH = 1000
# Each item (an enqueue body, or a key) is decoded on its own: a bad one is refused alone.
BatchItems = Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class BatchRequest(msgspec.Struct, frozen=True, rename="camel"):
    """Body of `POST /api/{kind}/enqueue-batch`: items, or keys sharing one content."""

    items: BatchItems | None = None
    keys: BatchItems | None = None
    # Empty: not given (a factory: the JSON Schema has no default to show for it).
    content: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b""))
    on_conflict: OnConflict | None = None


# The rules across its fields the handler checks (`batch_requests`), for the document.
BatchBody = Annotated[
    BatchRequest,
    msgspec.Meta(
        extra_json_schema={
            "anyOf": [
                {"required": ["items"], "properties": {"items": {"type": "array"}}},
                {"required": ["keys", "content"], "properties": {"keys": {"type": "array"}}},
            ],
            "not": {
                "required": ["items", "keys"],
                "properties": {"items": {"type": "array"}, "keys": {"type": "array"}},
            },
            "description": "`items`, or `keys` with the `content` they share (not both).",
        }
    ),
]
BATCH_TRIGGER = Trigger(TriggerType.BATCH)


def batch_requests(body: BatchRequest) -> list[EnqueueRequest | ServiceError]:
    """The batch's items as enqueue requests; an item that cannot be one is its error."""
    if body.items is not None and body.keys is not None:
        raise InvalidInput("body: give items or keys, not both")
    raws = body.items if body.items is not None else body.keys
    if not raws:
        raise InvalidInput("body: give 1 to 1000 items (or keys)")
    if len(raws) > MAX_BATCH:
        raise InvalidInput(f"body: {len(raws)} items, at most {MAX_BATCH} in one batch")
    if body.keys is not None and not body.content:
        raise InvalidInput("body: keys need a content for their jobs")
    requests: list[EnqueueRequest | ServiceError] = []
    for index, raw in enumerate(raws):
        try:
            if body.keys is not None:
                key = msgspec.json.decode(raw, type=BusinessKey)
                request = EnqueueRequest(content=body.content, key=key)
            else:
                request = msgspec.json.decode(raw, type=EnqueueRequest)
        except msgspec.ValidationError as exc:
            where = "keys" if body.keys is not None else "items"
            type_ = BusinessKey if body.keys is not None else EnqueueRequest
            requests.append(
                InvalidInput(messages.invalid_value(exc, type_, raw, f"{where}[{index}]"))
            )
            continue
        if body.on_conflict is not None and request.on_conflict is None:
            request = msgspec.structs.replace(request, on_conflict=body.on_conflict)
        requests.append(request)
    return requests


async def enqueue_batch(request: Request) -> Response:
    """POST /api/{kind}/enqueue-batch: one outcome per item, in order."""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), BatchRequest)
    requests = batch_requests(body)
    scope = request.scope
    outcomes = await service.enqueue_many(
        kind,
        requests,
        headers=handler_headers(request),
        incoming_at=scope.get("state", {}).get("incoming_at"),
        trigger=BATCH_TRIGGER,
    )
    expose = service.expose_tech_info
    items = [
        {
            "outcome": item.outcome,
            "status": item.job.status(expose_tech_info=expose) if item.job is not None else None,
            "error": item.error,
        }
        for item in outcomes
    ]
    return json_response({"items": items})


async def kind_progress(request: Request) -> Response:
    """POST /api/{kind}/progress"""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), ProgressRequest)
    job = await service.wait_for_change(body.id, kind=kind, wait=body.wait or 0.0, since=body.since)
    return status_response(request, job)


async def kind_stop(request: Request) -> Response:
    """POST /api/{kind}/stop"""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), IdRequest)
    return await _stop(request, body.id, kind)


async def kind_result(request: Request) -> Response:
    """POST /api/{kind}/result"""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), IdRequest)
    return await _result(request, body.id, kind, download=False)


async def kind_release(request: Request) -> Response:
    """POST /api/{kind}/release"""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    body = decode_body(await read_body(request), ReleaseRequest)
    released = await service.release(kind, body.key)
    return json_response(Released(kind, body.key, released))


async def _stop(request: Request, job_id: str, kind: str | None) -> Response:
    job, running = await service_of(request).stop(job_id, kind=kind)
    return status_response(request, job, 202 if running else 200)


async def _result(request: Request, job_id: str, kind: str | None, *, download: bool) -> Response:
    job, data = await service_of(request).result(job_id, kind=kind)
    if data is None:
        return Response(status_code=204)
    headers = {}
    # A type a browser would run (HTML, SVG, XML) is never shown inline: a job's output
    # must not run as this origin.
    if download or is_active_content(job.result_mime):
        headers["Content-Disposition"] = attachment(f"{job.id}{_suffix(job.result_mime)}")
    return Response(data, 200, headers, media_type=job.result_mime)


def _suffix(mime: str | None) -> str:
    base = (mime or "").split(";")[0].strip()
    return {
        "application/json": ".json",
        "text/csv": ".csv",
        "text/plain": ".txt",
        "text/html": ".html",
        "image/svg+xml": ".svg",
        "application/xml": ".xml",
        "application/pdf": ".pdf",
    }.get(base, ".bin")


# -- resource aliases ------------------------------------------------------------


async def job_status(request: Request) -> Response:
    """GET /api/jobs/{id}?wait=&since="""
    wait = WAIT.read(request)
    since = SINCE.read(request)
    job = await service_of(request).wait_for_change(
        JOB_ID.read(request), wait=wait or 0.0, since=since
    )
    return status_response(request, job)


async def job_stop(request: Request) -> Response:
    """POST /api/jobs/{id}/stop"""
    return await _stop(request, JOB_ID.read(request), None)


async def job_result(request: Request) -> Response:
    """GET /api/jobs/{id}/result?download=1"""
    download = (DOWNLOAD.read(request) or "0") not in {"0", "false"}
    return await _result(request, JOB_ID.read(request), None, download=download)


async def job_events(request: Request) -> Response:
    """GET /api/jobs/{id}/events: the status now and after each change, as SSE."""
    service = service_of(request)
    job_id = JOB_ID.read(request)
    await service.get(job_id)
    expose = service.expose_tech_info

    async def stream() -> AsyncIterator[bytes]:
        try:
            async for job in service.watch(job_id):
                if job is None:
                    yield b": keep-alive\n\n"
                else:
                    status = _encoder.encode(job.status(expose_tech_info=expose))
                    yield b"id: %d\ndata: %s\n\n" % (job.version, status)
        except NotFound:
            yield b"event: gone\ndata: {}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def list_jobs(request: Request) -> Response:
    """GET /api/jobs?kind=&state=&key=&parent=&limit=&cursor="""
    kind, state, key, parent, limit, cursor = (param.read(request) for param in LIST_PARAMS)
    query = JobQuery(
        kind=kind, state=state, key=key, parent=parent, limit=min(limit or 50, 200), cursor=cursor
    )
    page = await service_of(request).list_jobs(query)
    expose = service_of(request).expose_tech_info
    items = [job.status(expose_tech_info=expose) for job in page.items]
    return json_response(JobList(items, page.next))


async def key_context(request: Request) -> Response:
    """GET /api/keys/{kind}/{key}: the key's rule, holder and recent jobs."""
    service = service_of(request)
    kind = request.path_params["kind"]
    service.registry.get(kind)
    key = KEY.read(request)
    return json_response(await service.key_context(kind, key))


async def list_kinds(request: Request) -> Response:
    """GET /api/kinds"""
    kinds = [
        KindInfo(kind.name, kind.title, kind.description, kind.schema())
        for kind in service_of(request).registry
    ]
    return json_response(kinds)


def api_routes(plugin_routes: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """The job API routes: enqueue first (the hot route; the GET aliases that share its
    paths differ in method, so a kind may be called `jobs`), the aliases before the
    per-kind calls (so `jobs` is never taken for a kind there), and the plugins' routes
    ahead of the per-kind ones (so their paths win)."""
    return [
        Route("/api/{kind}/enqueue", enqueue, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/kinds", list_kinds, methods=["GET"]),
        Route("/api/jobs/{id}", job_status, methods=["GET"]),
        Route("/api/keys/{kind}/{key:path}", key_context, methods=["GET"]),
        *plugin_routes,
        Route("/api/jobs/{id}/stop", job_stop, methods=["POST"]),
        Route("/api/jobs/{id}/result", job_result, methods=["GET"]),
        Route("/api/jobs/{id}/events", job_events, methods=["GET"]),
        Route("/api/{kind}/enqueue-batch", enqueue_batch, methods=["POST"]),
        Route("/api/{kind}/progress", kind_progress, methods=["POST"]),
        Route("/api/{kind}/stop", kind_stop, methods=["POST"]),
        Route("/api/{kind}/result", kind_result, methods=["POST"]),
        Route("/api/{kind}/release", kind_release, methods=["POST"]),
    ]


# -- errors ------------------------------------------------------------------------


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if isinstance(exc, JobStateConflict):
        return status_response(request, exc.job, 409)
    headers = {}
    if "retryAfter" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retryAfter"])
    return json_response(exc.body(), exc.status_code, headers)


async def _backend_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendUnavailable)
    body = {"error": {"code": "backend_unavailable", "message": str(exc), "backend": exc.backend}}
    return json_response(body, 503, {"Retry-After": "1"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ServiceError
    if exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        error = ServiceError(str(exc.detail))
        error.status_code = exc.status_code
        error.code = "http_error"
    return json_response(error.body(), error.status_code, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    body = {"error": {"code": "internal", "message": "internal error; the server log has details"}}
    return json_response(body, 500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ServiceError: _service_error,
    BackendUnavailable: _backend_error,
    HTTPException: _http_error,
    Exception: _server_error,
}


class IncomingAt:
    """ASGI middleware at the door of every HTTP request: it answers 431 to headers over
    64 KiB in all (before routing: no handler, hook or store sees them) and stamps
    `request.state.incoming_at` on the others."""

    def __init__(self, app: Any, refuse: Callable[[Any], Response | None] | None = None) -> None:
        self.app = app
        # Asked of every POST before routing (the drain's refusal of new work).
        self.refuse = refuse

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if headers_size(scope["headers"]) > MAX_HEADER_BYTES:
                await _headers_too_large(scope, receive, send)
                return
            if self.refuse is not None and scope["method"] == "POST":
                refusal = self.refuse(scope)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
            scope.setdefault("state", {})["incoming_at"] = utcnow()
        await self.app(scope, receive, send)


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    error = HeadersTooLarge(f"request headers are over {MAX_HEADER_BYTES} bytes in all")
    # Close the connection: a client that sent this much may send it again.
    response = json_response(error.body(), error.status_code, {"Connection": "close"})
    await response(scope, receive, send)
