"""Built-in plugin: schedules (API.md section 12).

Routes: `PUT/GET/DELETE /api/schedules/{name}`, `GET /api/schedules`, and
`POST /api/schedules/{name}/pause|resume|trigger`. A lifespan hook writes the
`[[schedules]]` of the config at start-up (checked first: a bad one is a
`ConfigError` naming e.g. `schedules[0].cron`) and, on nodes with
`scheduler = true`, runs the scheduler loop (`schedule_runner.py`). Schedules
themselves are stored documents (`schedule_book.py`); timing is
`asyncproc.schedule_times`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import decode_body, json_response, read_body, service_of, status_response
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.config import ScheduleSettings, Settings, parse_duration
from asyncproc.errors import BackendUnavailable, ConfigError, InvalidInput, NotFound
from asyncproc.hooks import Node
from asyncproc.model import JobStatus
from asyncproc.registry import Registry
from asyncproc.schedule_times import Catchup, Overlap
from asyncproc.service import BusinessKey

from .schedule_book import (
    NAME,
    Definition,
    Schedule,
    ScheduleBook,
    ScheduleInvalid,
    check_name,
    define,
    invalid_input,
)
from .schedule_runner import Scheduler, count_runs, start_job

__all__ = ["ScheduleBody", "ScheduleList", "check_schedules", "config_definitions", "registry"]

log = logging.getLogger("asyncproc.schedules")

registry = Registry()


class ScheduleBody(msgspec.Struct, frozen=True, rename="camel"):
    """The body of `PUT /api/schedules/{name}` (durations: seconds or `"15m"`)."""

    kind: str
    content: msgspec.Raw
    key: BusinessKey | None = None
    cron: str | None = None
    every: float | str | None = None
    timezone: str = "UTC"
    overlap: Overlap = Overlap.SKIP
    catchup: Catchup = Catchup.ONE
    catchup_window: float | str = 3600.0
    paused: bool = False


# What the document says beyond the fields' types (`define` checks it: 422 naming `cron`).
_BODY = Annotated[
    ScheduleBody,
    msgspec.Meta(
        extra_json_schema={
            "oneOf": [
                {"required": ["cron"], "properties": {"cron": {"type": "string"}}},
                {"required": ["every"], "properties": {"every": {"type": ["number", "string"]}}},
            ],
            "description": "Exactly one of `cron` and `every`.",
        }
    ),
]

# What `check_name` accepts (a PUT with another name answers 422; other calls 404).
ScheduleName = Annotated[str, msgspec.Meta(pattern=f"^{NAME.pattern}$")]


class ScheduleList(msgspec.Struct, frozen=True):
    """`GET /api/schedules`: every schedule, by name."""

    items: list[Schedule]


# -- configuration and the scheduler -------------------------------------------------


def config_definitions(
    kinds: Registry, schedules: Sequence[ScheduleSettings]
) -> list[tuple[str, Definition]]:
    """The checked `[[schedules]]` tables; `ConfigError` naming the first bad key."""
    checked: list[tuple[str, Definition]] = []
    for index, table in enumerate(schedules):
        try:
            check_name(table.name)
            if any(name == table.name for name, _ in checked):
                raise ScheduleInvalid("name", f"{table.name!r} is declared twice")
            definition = define(
                kinds,
                kind=table.kind,
                content=msgspec.json.encode(table.content),
                key=table.key,
                cron=table.cron,
                every=table.every,
                timezone=table.timezone,
                overlap=table.overlap,
                catchup=table.catchup,
                catchup_window=table.catchup_window,
                paused=table.paused,
            )
        except ScheduleInvalid as exc:
            raise ConfigError(f"schedules[{index}].{exc.field}", exc.message) from None
        checked.append((table.name, definition))
    return checked


@registry.check
def check_schedules(settings: Settings, kinds: Registry) -> None:
    """Refuse bad `[[schedules]]` when the app is built (`ConfigError` naming the key)."""
    config_definitions(kinds, settings.schedules)


async def _write_config(book: ScheduleBook, definitions: list[tuple[str, Definition]]) -> None:
    for name, definition in definitions:
        await book.put(name, definition, "config")


async def _write_config_later(
    book: ScheduleBook, definitions: list[tuple[str, Definition]]
) -> None:
    """Retry writing the config's schedules until the store answers."""
    while True:
        await anyio.sleep(1.0)
        try:
            await _write_config(book, definitions)
        except BackendUnavailable:
            continue
        return


@registry.lifespan
@asynccontextmanager
async def scheduling(node: Node) -> AsyncIterator[None]:
    """Write the config's schedules, then fire schedules while the node runs."""
    book = ScheduleBook(node.service)
    definitions = config_definitions(node.service.registry, node.settings.schedules)
    # (schedule, outcome) -> runs this node started, for the metrics.
    runs: dict[tuple[str, str], int] = {}
    node.app.state.schedule_runs = runs
    async with anyio.create_task_group() as tasks:
        try:
            await _write_config(book, definitions)
        except BackendUnavailable as exc:
            log.warning("schedules: cannot write the configured schedules yet: %s", exc)
            tasks.start_soon(_write_config_later, book, definitions)
        if node.settings.scheduler:
            tasks.start_soon(Scheduler(book, runs=runs).run)
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()


# -- routes ----------------------------------------------------------------------------


def _book(request: Request) -> ScheduleBook:
    return ScheduleBook(service_of(request))


def _not_found(name: str) -> NotFound:
    return NotFound(f"no schedule {name!r}")


def _seconds(field: str, value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", field=field) from None


@registry.route("/api/schedules", methods=["GET"])
async def list_schedules(request: Request) -> Response:
    """GET /api/schedules"""
    items = [schedule.public() for schedule in await _book(request).read_all()]
    return json_response(ScheduleList(items))


@registry.route("/api/schedules/{name}", methods=["GET", "PUT", "DELETE"])
async def schedule(request: Request) -> Response:
    """GET, PUT and DELETE /api/schedules/{name}"""
    book = _book(request)
    name = request.path_params["name"]
    if request.method == "PUT":
        return await _put(request, book, name)
    if request.method == "DELETE":
        if not await book.delete(name):
            raise _not_found(name)
        return Response(status_code=204)
    found = await book.get(name)
    if found is None:
        raise _not_found(name)
    return json_response(found.public())


async def _put(request: Request, book: ScheduleBook, name: str) -> Response:
    body = decode_body(await read_body(request), ScheduleBody)
    try:
        check_name(name)
        definition = define(
            book.service.registry,
            kind=body.kind,
            content=bytes(body.content),
            key=body.key,
            cron=body.cron,
            every=_seconds("every", body.every),
            timezone=body.timezone,
            overlap=body.overlap,
            catchup=body.catchup,
            catchup_window=_seconds("catchupWindow", body.catchup_window) or 0.0,
            paused=body.paused,
        )
    except ScheduleInvalid as exc:
        raise invalid_input(exc) from None
    stored, created = await book.put(name, definition, "api")
    return json_response(stored.public(), 201 if created else 200)


@registry.route("/api/schedules/{name}/pause", methods=["POST"])
async def pause(request: Request) -> Response:
    """POST /api/schedules/{name}/pause: no ticks until resumed."""
    return await _set_paused(request, paused=True)


@registry.route("/api/schedules/{name}/resume", methods=["POST"])
async def resume(request: Request) -> Response:
    """POST /api/schedules/{name}/resume: ticks again from the next one after now."""
    return await _set_paused(request, paused=False)


async def _set_paused(request: Request, *, paused: bool) -> Response:
    name = request.path_params["name"]
    changed = await _book(request).set_paused(name, paused)
    if changed is None:
        raise _not_found(name)
    return json_response(changed.public())


@registry.route("/api/schedules/{name}/trigger", methods=["POST"])
async def trigger(request: Request) -> Response:
    """POST /api/schedules/{name}/trigger: start a job now, under the overlap rule."""
    book = _book(request)
    name = request.path_params["name"]
    found = await book.get(name)
    if found is None:
        raise _not_found(name)
    now = book.clock()
    run, job = await start_job(book.service, found, request_id=None, at=now)
    runs: dict[tuple[str, str], int] | None = getattr(request.app.state, "schedule_runs", None)
    if runs is not None:
        count_runs(runs, name, [run])
    if run.outcome == "skipped":
        return status_response(request, job, 200)
    await book.record(name, [run])
    response = status_response(request, job, 202)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return response


# -- OpenAPI ---------------------------------------------------------------------------

_NAME = Param("name", "path", ScheduleName, "The schedule's name")
_SCHEDULE = Answer("The schedule", Schedule)
_NOT_FOUND = {404: Answer("No schedule of this name", ErrorBody)}
_TAG = "schedules"

registry.document(
    Operation(
        "GET",
        "/api/schedules",
        "Every schedule, by name",
        _TAG,
        {200: Answer("The schedules", ScheduleList)},
    ),
    Operation(
        "GET",
        "/api/schedules/{name}",
        "One schedule",
        _TAG,
        {200: _SCHEDULE, **_NOT_FOUND},
        [_NAME],
    ),
    Operation(
        "PUT",
        "/api/schedules/{name}",
        "Create or replace a schedule",
        _TAG,
        {
            201: Answer("Created: the schedule", Schedule),
            200: Answer("Replaced: the schedule", Schedule),
        },
        [_NAME],
        body=_BODY,
        description=(
            "`422` naming the field for a bad cron, duration or time zone, both or neither of "
            "`cron` and `every`, an unknown kind, or content that fails the kind's schema."
        ),
    ),
    Operation(
        "DELETE",
        "/api/schedules/{name}",
        "Delete a schedule",
        _TAG,
        {204: Answer("Deleted"), **_NOT_FOUND},
        [_NAME],
    ),
    Operation(
        "POST",
        "/api/schedules/{name}/pause",
        "Pause: no ticks until resumed",
        _TAG,
        {200: _SCHEDULE, **_NOT_FOUND},
        [_NAME],
    ),
    Operation(
        "POST",
        "/api/schedules/{name}/resume",
        "Resume from the next tick after now",
        _TAG,
        {200: _SCHEDULE, **_NOT_FOUND},
        [_NAME],
    ),
    Operation(
        "POST",
        "/api/schedules/{name}/trigger",
        "Start a job now, under the overlap rule",
        _TAG,
        {
            202: Answer("The new job's status", JobStatus, headers={"Location": "The job's URL"}),
            200: Answer("`overlap: skip` found an active job: its status", JobStatus),
            409: Answer("The job's key is held", ErrorBody),
            **_NOT_FOUND,
        },
        [_NAME],
        # What the schedule's enqueue may answer (content checked again, a full queue).
        errors=(422, 431, 503),
    ),
)
