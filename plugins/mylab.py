"""Plugin: MyLab.AsyncProcessor API v2 over asyncproc jobs (API.md section 14).

Loaded when `mylab = true` (`registry.SETTING_PLUGINS`). Its routes serve MyLab's
published API under `/requests...` and `/v2/requests...` (the path MyLab's server and
SDK use) for jobs of `mylab_kind`:

- client calls: create a request, read its status, details and result;
- processor calls (for an external `mylab_kind`): processing, biz-step, error, result,
  completed. A MyLab processor holds no lease: it learns of a job from MyLab's queue
  message and reports through these calls; a call on a finished request answers `409`
  (MyLab's SDK throws on any non-2xx answer: that is how a stop reaches it).

Its lifespan hook gives `mylab_kind` MyLab's callback message shape (hook layer:
`Hooks.callback_shapes`), publishes each new job's MyLab queue message to `mylab_queue`
(RabbitMQ), drains the spare messages MyLab processors leave on `ext.<kind>`, and stops at
once a running MyLab job whose stop was requested while no lease holder runs it (a
MyLab processor would only learn of it at its next call): `plugins.mylab_hooks`. The
mapping itself is `plugins.mylab_model`, the OpenAPI paths `plugins.mylab_openapi`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import (
    JOB_ID,
    decode_body,
    handler_headers,
    json_response,
    read_body,
    service_of,
)
from asyncproc.config import Settings
from asyncproc.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    ServiceError,
    TransitionRefused,
    UnsupportedMediaType,
)
from asyncproc.hooks import Node
from asyncproc.lifecycle import Event, Fail, Report, Start, Stopped, Succeed
from asyncproc.model import Job, JobState
from asyncproc.registry import Registry, optional_backend
from asyncproc.service import EnqueueRequest

from . import mylab_openapi
from .mylab_hooks import CallbackShape, LeaselessStopper, NewJobTeller, drain_spare_messages
from .mylab_model import (
    CreateRequest,
    ProcessingError,
    error_info,
    is_json,
    process_step,
    request_details,
    request_status,
)

__all__ = ["registry"]

registry = Registry()

PREFIXES = ("/requests", "/v2/requests")


class ResultNotReady(ServiceError):
    """Raised when a request's result is asked before it has one (MyLab answers 400)."""

    status_code = 400
    code = "result_not_ready"


class NotExternal(Conflict):
    """Raised when a MyLab processor call names a job its Python handler runs."""

    code = "not_external"


class RequestCompleted(Conflict):
    """Raised when a MyLab processor call names a finished (succeeded, failed, stopped,
    timed-out) request: nothing changes, and the processor's SDK throws."""

    code = "request_completed"


class TakenElsewhere(Conflict):
    """Raised when a MyLab processor call names a job a processor took over
    `/api/workers/take` (it holds the lease)."""

    code = "request_taken"


class NotStartable(Conflict):
    """Raised when a MyLab processor starts a request that may not start yet (its
    `notBefore` is ahead, or the key's previous holder still runs)."""

    code = "not_startable"


# -- settings -------------------------------------------------------------------------


@registry.check
def check_settings(settings: Settings, kinds: Registry) -> None:
    """`mylab_kind` names a registered or external kind; `mylab_queue` needs RabbitMQ."""
    if settings.mylab_kind not in kinds:
        raise ConfigError(
            "mylab_kind", f"{settings.mylab_kind!r} is no registered or external kind"
        )
    if settings.mylab_queue and settings.queue != "rabbitmq":
        raise ConfigError("mylab_queue", "needs queue = rabbitmq")
    # The routes' document, with the content `POST /requests` checks (`mylab_kind`'s).
    content = kinds.get(settings.mylab_kind).content_type
    kinds.hooks.openapi_operations += mylab_openapi.operations(PREFIXES, content)


# -- hooks ----------------------------------------------------------------------------


@registry.lifespan
@asynccontextmanager
async def mylab(node: Node) -> AsyncIterator[None]:
    """MyLab's callback shape, queue messages and stops for `mylab_kind` while the node runs."""
    settings = node.settings
    service = node.service
    hooks = service.hooks
    kind = settings.mylab_kind
    async with AsyncExitStack() as stack:
        hooks.callback_shapes[kind] = CallbackShape(
            service, expose_tech_info=settings.expose_tech_info
        )
        stack.callback(hooks.callback_shapes.pop, kind, None)
        if settings.mylab_queue:
            module = optional_backend("asyncproc.backends.callbacks", "mylab_queue", "rabbitmq")
            publisher = module.QueuePublisher(
                settings.amqp_url,
                settings.mylab_queue,
                name=f"asyncproc {settings.key_prefix} mylab queue",
            )
            await stack.enter_async_context(publisher.running())
            teller = NewJobTeller(kind, publisher)
            hooks.after_change.append(teller)
            stack.callback(hooks.after_change.remove, teller)
        if service.registry.get(kind).external:
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(drain_spare_messages, service, kind)
            stack.callback(tasks.cancel_scope.cancel)
        stopper = LeaselessStopper(kind, service)
        hooks.after_change.append(stopper)
        stack.callback(hooks.after_change.remove, stopper)
        yield


# -- client calls ---------------------------------------------------------------------


def mylab_kind(request: Request) -> str:
    """The kind MyLab requests are jobs of."""
    kind: str = request.app.state.settings.mylab_kind
    return kind


async def request_job(request: Request) -> Job:
    """The MyLab job the path names; 404 when unknown, purged, or of another kind."""
    return await service_of(request).get(JOB_ID.read(request), mylab_kind(request))


async def create(request: Request) -> Response:
    """POST /requests: a job of `mylab_kind`; `200` text/plain with its id (also for a
    `requestId` that exists already)."""
    service = service_of(request)
    body = decode_body(await read_body(request), CreateRequest)
    job, _ = await service.enqueue(
        mylab_kind(request),
        EnqueueRequest(
            content=body.content,
            request_id=body.request_id,
            proc_routing=body.proc_routing,
            callback_routing=body.callback_routing,
        ),
        headers=handler_headers(request),
        incoming_at=request.scope.get("state", {}).get("incoming_at"),
    )
    return Response(job.id, 200, media_type="text/plain")


async def status(request: Request) -> Response:
    """GET /requests/{id}/status: MyLab's RequestStatus."""
    job = await request_job(request)
    expose = service_of(request).expose_tech_info
    return json_response(request_status(job, expose_tech_info=expose))


_TRUE = frozenset({"true", "1", "yes"})


async def details(request: Request) -> Response:
    """GET /requests/{id}?include_resp=: MyLab's RequestDetails (`resObj`/`resBin` with
    `include_resp=true` once the request has a result)."""
    raw = (mylab_openapi.INCLUDE_RESP.read(request) or "").lower()
    job = await request_job(request)
    service = service_of(request)
    result = None
    if raw in _TRUE and job.state is JobState.SUCCEEDED and job.result_size is not None:
        result = await service.store.get_result(job.id)
    expose = service.expose_tech_info
    return json_response(request_details(job, result, expose_tech_info=expose))


async def result(request: Request) -> Response:
    """GET /requests/{id}/result: the result bytes with their type; `400` until there is one."""
    job = await request_job(request)
    data = None
    if job.state is JobState.SUCCEEDED and job.result_size is not None:
        data = await service_of(request).store.get_result(job.id)
    if data is None:
        step = process_step(job.state)
        raise ResultNotReady(f"request {job.id} has no result ({step}, {job.state})")
    return Response(data, 200, media_type=job.result_mime)


# -- processor calls --------------------------------------------------------------------


async def running_job(request: Request) -> Job:
    """The MyLab job a processor reports on, running: a queued one is started (a MyLab
    processor says `processing` first, but may report at once). A finished one answers
    `409 request_completed`, and so does one whose stop was requested (it stops now)."""
    service = service_of(request)
    job = await request_job(request)
    if not service.registry.get(job.kind).external:
        raise NotExternal(f"jobs of kind {job.kind} are run by its Python handler")
    if job.state is JobState.QUEUED:
        try:
            job = await service.transition(job.id, Start())
        except TransitionRefused as refused:
            job = refused.job
            if job.state is JobState.QUEUED:
                raise NotStartable(f"request {job.id} may not start yet") from None
    if job.state is JobState.RUNNING and await service.store.lease_of(job.id) is not None:
        # Taken over `/api/workers/take`: its processor holds the lease (and the token).
        raise TakenElsewhere(f"request {job.id} is run by a processor with a lease")
    if job.state is JobState.RUNNING and job.stop_requested:
        try:
            job = await service.transition(job.id, Stopped())
        except TransitionRefused as refused:
            job = refused.job
    if job.state.terminal:
        raise completed(job)
    return job


def completed(job: Job) -> RequestCompleted:
    """The refusal of a processor call on a finished job."""
    return RequestCompleted(
        f"request {job.id} is completed ({job.state})", state=str(job.state), jobId=job.id
    )


async def report(request: Request, job: Job, event: Event, data: bytes | None = None) -> Response:
    """Apply a processor's event to its running job; `200` with no body."""
    try:
        await service_of(request).transition(job.id, event, result=data)
    except TransitionRefused as refused:
        raise completed(refused.job) from None
    return Response(status_code=200)


async def processing(request: Request) -> Response:
    """POST /requests/{id}/status/step/processing: queued -> running (again: 200)."""
    await running_job(request)
    return Response(status_code=200)


async def completed_step(request: Request) -> Response:
    """POST /requests/{id}/status/step/completed: succeeded without a result."""
    job = await running_job(request)
    return await report(request, job, Succeed())


def media_type(request: Request) -> str:
    """The request's Content-Type without its parameters, lower case ('' for none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def biz_step(request: Request) -> Response:
    """PUT /requests/{id}/status/biz-step: a text/plain body, or a JSON string."""
    kind = media_type(request)
    if kind == "text/plain":
        raw = await read_body(request, json=False)
        try:
            step = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body is not UTF-8 text") from None
    elif kind == "application/json" or kind.endswith("+json"):
        step = decode_body(await read_body(request), str)
    else:
        raise UnsupportedMediaType(
            f"Content-Type {kind or 'none'!r}: this call takes text/plain or a JSON string"
        )
    job = await running_job(request)
    return await report(request, job, Report(biz_step=step))


async def error(request: Request) -> Response:
    """PUT /requests/{id}/status/error: failed with the ProcessingError's fields."""
    body = decode_body(await read_body(request), ProcessingError)
    job = await running_job(request)
    try:
        await service_of(request).fail_for_good(job, Fail(error_info(body)))
    except TransitionRefused as refused:
        raise completed(refused.job) from None
    return Response(status_code=200)


async def put_result(request: Request) -> Response:
    """PUT /requests/{id}/result: a JSON or an octet-stream result; `415` for another type."""
    kind = media_type(request)
    if is_json(kind):
        data = await read_body(request)
        try:
            msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        mime = "application/json"
    elif kind == "application/octet-stream":
        data = await read_body(request, json=False)
        mime = kind
    else:
        raise UnsupportedMediaType(
            f"Content-Type {kind or 'none'!r}: a result is application/json or "
            "application/octet-stream"
        )
    job = await running_job(request)
    return await report(request, job, Succeed(len(data), mime), data)


for _prefix in PREFIXES:
    registry.route(_prefix, ["POST"])(create)
    registry.route(_prefix + "/{id}", ["GET"])(details)
    registry.route(_prefix + "/{id}/status", ["GET"])(status)
    registry.route(_prefix + "/{id}/result", ["GET"])(result)
    registry.route(_prefix + "/{id}/result", ["PUT"])(put_result)
    registry.route(_prefix + "/{id}/status/biz-step", ["PUT"])(biz_step)
    registry.route(_prefix + "/{id}/status/error", ["PUT"])(error)
    registry.route(_prefix + "/{id}/status/step/processing", ["POST"])(processing)
    registry.route(_prefix + "/{id}/status/step/completed", ["POST"])(completed_step)
