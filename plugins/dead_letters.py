"""Built-in plugin: dead letters (API.md section 13).

What could not run is kept where an operator sees it, may requeue it or delete it:
jobs that failed with `dead_letter` (lost `max_deliveries` times), compensation
jobs that failed for good, and trigger messages that could not become jobs (the
triggers plugin mirrors each one it sends to RabbitMQ's `<prefix>triggers.dead`).
They are documents of the StateStore (`dead_letter_book`), so every node lists the
same ones.

Routes: `GET /api/dead-letters?limit=&cursor=`, `POST /api/dead-letters/{id}/requeue`,
`DELETE /api/dead-letters/{id}`. A lifespan hook adds this node's after-change hook
that records the jobs (a hook needs the node's store, so it is bound at start).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import json_response, service_of, status_response
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.errors import Conflict, JobNotFound, NotFound, TransitionRefused
from asyncproc.hooks import Node
from asyncproc.lifecycle import Revive
from asyncproc.model import Job, JobState, JobStatus, Uniqueness
from asyncproc.registry import Registry
from asyncproc.service import JobService

from .dead_letter_book import DeadLetter, DeadLetterBook, DeadLetterPage, Stored, is_dead
from .triggers import message_event_id, request_id

__all__ = ["DeadLetterRecorder", "registry"]

log = logging.getLogger("asyncproc.dead_letters")

registry = Registry()

_LIMIT = Param(
    "limit",
    "query",
    Annotated[int, msgspec.Meta(ge=1)] | None,
    "Page size: default 50, at most 200",
)
_CURSOR = Param("cursor", "query", str | None, "The `next` of the previous page")
_ID = Param("id", "path", str, "The dead letter's id")


class DeadLetterRecorder:
    """An after-change hook: records the jobs that just became dead letters."""

    # Only changes into `failed` reach it (the hook layer skips the others unasked).
    states = frozenset({JobState.FAILED})

    def __init__(self, service: JobService) -> None:
        self.book = DeadLetterBook(service.store)

    async def __call__(self, before: Job | None, after: Job) -> None:
        """Record `after` when this change makes it a dead letter (`is_dead`)."""
        if after.state is JobState.FAILED and is_dead(before, after):
            letter = await self.book.record_job(after)
            log.warning("job %s (%s) is a dead letter: %s", after.id, after.kind, letter.reason)


@registry.lifespan
@asynccontextmanager
async def recording(node: Node) -> AsyncIterator[None]:
    """Record this node's dead jobs while it runs."""
    hooks = node.service.hooks
    recorder = DeadLetterRecorder(node.service)
    hooks.after_change.append(recorder)
    try:
        yield
    finally:
        hooks.after_change.remove(recorder)


# -- routes ----------------------------------------------------------------------------


def _book(request: Request) -> DeadLetterBook:
    return DeadLetterBook(service_of(request).store)


async def _letter(book: DeadLetterBook, letter_id: str) -> Stored:
    stored = await book.get(letter_id)
    if stored is None:
        raise NotFound(f"no dead letter {letter_id!r}")
    return stored


@registry.route("/api/dead-letters", methods=["GET"])
async def list_dead_letters(request: Request) -> Response:
    """GET /api/dead-letters?limit=&cursor=: newest first."""
    limit = _LIMIT.read(request) or 50
    return json_response(await _book(request).page(min(limit, 200), _CURSOR.read(request)))


@registry.route("/api/dead-letters/{id}", methods=["DELETE"])
async def delete_dead_letter(request: Request) -> Response:
    """DELETE /api/dead-letters/{id}: forget it (a dead job stays failed)."""
    letter_id = request.path_params["id"]
    if not await _book(request).delete(letter_id):
        raise NotFound(f"no dead letter {letter_id!r}")
    return Response(status_code=204)


@registry.route("/api/dead-letters/{id}/requeue", methods=["POST"])
async def requeue_dead_letter(request: Request) -> Response:
    """POST /api/dead-letters/{id}/requeue: run it again; 202 + the job's status."""
    book = _book(request)
    letter_id = request.path_params["id"]
    stored = await _letter(book, letter_id)
    service = service_of(request)
    if stored.letter.source == "job":
        job = await _revive(service, stored.letter)
    else:
        job = await _offer(request, stored)
    # Only once the job runs again: a requeue that failed half way can be sent again.
    await book.delete(letter_id)
    response = status_response(request, job, 202)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return response


async def _revive(service: JobService, letter: DeadLetter) -> Job:
    """Queue a dead job again (attempt kept) and publish it.

    A job already queued again (an earlier requeue whose publish or delete did not
    happen) is published again: a second message of a queued job starts it once.
    """
    job_id = letter.job_id or ""
    try:
        job = await service.get(job_id)
    except JobNotFound:
        raise Conflict(f"job {job_id} is gone (purged after its retention)", jobId=job_id) from None
    if job.state is JobState.FAILED:
        kind = service.registry.get(job.kind) if job.kind in service.registry else None
        # With its kind's key rule, the job takes its key again (409 while another job
        # holds it): queued again, it never runs beside the key's new holder.
        rule = kind.uniqueness if kind is not None else Uniqueness.NONE
        try:
            job = await service.transition(job_id, Revive(rule=rule))
        except TransitionRefused as refused:
            raise _not_requeueable(refused.job) from None
    elif job.state is not JobState.QUEUED:
        raise _not_requeueable(job)
    await service.queue.publish(job.id, service.routing_of(job))
    return job


def _not_requeueable(job: Job) -> Conflict:
    error_id = job.error.error_id if job.error is not None else None
    why = f"failed with {error_id}" if job.state is JobState.FAILED else str(job.state)
    return Conflict(f"job {job.id} cannot be queued again: it is {why}", jobId=job.id)


async def _offer(request: Request, stored: Stored) -> Job:
    """Offer a dead trigger message to its trigger again; the job it started (or found)."""
    letter = stored.letter
    name = letter.trigger or ""
    triggers: Any = getattr(request.app.state, "triggers", None)
    trigger = triggers.triggers.get(name) if triggers is not None else None
    if trigger is None:
        raise Conflict(f"no trigger {name!r} on this node")
    body = stored.message_body()
    if body is None:
        raise Conflict(
            "the message was too big to keep; it is in RabbitMQ's queue "
            f"{triggers.key_prefix}triggers.dead"
        )
    # Backend outages and a full queue raise from here: 503, the letter stays.
    reason = await triggers.on_message(name, body, stored.message_id, stored.headers)
    if reason is not None:
        raise Conflict(f"trigger {name} refused the message again: {reason}")
    payload = msgspec.json.decode(body)
    job_id = request_id(name, message_event_id(trigger, payload, body, stored.message_id))
    return await service_of(request).get(job_id)


# -- OpenAPI ---------------------------------------------------------------------------

_NOT_FOUND = {404: Answer("No dead letter of this id", ErrorBody)}
_TAG = "dead letters"

registry.document(
    Operation(
        "GET",
        "/api/dead-letters",
        "Dead letters, newest first",
        _TAG,
        {
            200: Answer("A page of dead letters", DeadLetterPage),
            400: Answer("A cursor this service did not hand out", ErrorBody),
        },
        [_LIMIT, _CURSOR],
    ),
    Operation(
        "DELETE",
        "/api/dead-letters/{id}",
        "Delete a dead letter",
        _TAG,
        {204: Answer("Deleted"), **_NOT_FOUND},
        [_ID],
    ),
    Operation(
        "POST",
        "/api/dead-letters/{id}/requeue",
        "Run a dead letter again: a dead job queued again, a message offered again",
        _TAG,
        {
            202: Answer(
                "The job that runs again", JobStatus, headers={"Location": "The job's URL"}
            ),
            409: Answer("It cannot run again (gone, its key held, refused again)", ErrorBody),
            **_NOT_FOUND,
        },
        [_ID],
    ),
)
