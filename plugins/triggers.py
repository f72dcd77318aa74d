"""Built-in plugin: event triggers (HTTP) and message triggers (RabbitMQ), API.md section 12.

A `[[triggers]]` table maps an outside event to jobs of one kind. The payload (a
JSON object) gives the content (`content_field`, default the whole payload), the
key (`key_field`) and the event's id (`id_field`; for a message, its AMQP
`message_id` first). The event's id becomes the job's requestId (through
`request_id`), so an event or message with an id starts at most one job per
trigger however often it comes. A message with no id at all is known by the
SHA-256 of its body: identical bodies without ids count as one message. An HTTP
event without an id starts a new job each time it is posted.

Every node keeps its triggers and their counts in `app.state.triggers` (made by
the lifespan hook; nothing mutable lives in this module). Message triggers are
consumed by `asyncproc.backends.amqp_triggers` on every node, whatever its role
and backends, as long as RabbitMQ answers at `amqp_url`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import handler_headers, json_response, read_body
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.config import Settings, TriggerSettings
from asyncproc.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    InvalidInput,
    NotFound,
    Overloaded,
    ServiceError,
)
from asyncproc.hooks import Node
from asyncproc.input_limits import json_too_deep
from asyncproc.messages import invalid_json, unknown_kind
from asyncproc.model import Job, JobStatus, Trigger, TriggerType
from asyncproc.registry import Registry, optional_backend
from asyncproc.service import BusinessKey, EnqueueRequest, JobService, RequestId

from .dead_letter_book import DeadLetterBook

__all__ = [
    "EventAnswer",
    "TriggerInfo",
    "TriggerItem",
    "TriggerList",
    "Triggers",
    "check_triggers",
    "enqueue_request",
    "message_event_id",
    "registry",
    "request_id",
]

registry = Registry()
log = logging.getLogger("asyncproc.triggers")

Outcome = Literal["created", "existing", "refused"]
# Longest reason kept in a dead letter's header (a schema error can be long).
_REASON_MAX = 1000


class TriggerItem(msgspec.Struct, frozen=True):
    """What one trigger made of an event: a job (created or existing) or a refusal."""

    trigger: str
    outcome: Outcome
    status: JobStatus | None
    error: dict[str, Any] | None


class EventAnswer(msgspec.Struct, frozen=True):
    """The answer of `POST /api/events/{event}`: one item per listening trigger."""

    items: list[TriggerItem]


class TriggerInfo(msgspec.Struct, frozen=True):
    """A trigger and what it did since this node started."""

    name: str
    kind: str
    event: str | None
    queue: str | None
    received: int
    created: int
    existing: int
    refused: int


class TriggerList(msgspec.Struct, frozen=True):
    """The answer of `GET /api/triggers`."""

    items: list[TriggerInfo]


class _Counts:
    """Events or messages one trigger received, and their outcomes (this node only)."""

    __slots__ = ("created", "existing", "received", "refused")

    def __init__(self) -> None:
        self.received = self.created = self.existing = self.refused = 0

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


# -- the mapping (pure) --------------------------------------------------------------


def request_id(trigger: str, event_id: str) -> str:
    """The requestId of the job that `trigger` starts for the event `event_id`.

    `<trigger>:<event id>` when that is a valid requestId and the trigger name has no
    colon (so the split is unambiguous); otherwise `:` + the SHA-256 of both, which no
    readable id can equal (it would need an empty trigger name).
    """
    readable = f"{trigger}:{event_id}"
    if ":" not in trigger and trigger and _valid_request_id(readable):
        return readable
    digest = hashlib.sha256(msgspec.json.encode([trigger, event_id])).hexdigest()
    return f":{digest}"


def _valid_request_id(value: str) -> bool:
    try:
        msgspec.convert(value, RequestId)
    except msgspec.ValidationError:
        return False
    return True


def _scalar_field(payload: Mapping[str, Any], field: str, what: str) -> str | None:
    """The payload's `field` as text (a string or an integer); None when absent or null."""
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidInput(f"payload field {field!r} ({what}) must be a non-empty string or an integer")


def event_id_of(trigger: TriggerSettings, payload: Mapping[str, Any]) -> str | None:
    """The event's id from the payload's `id_field`, None when it has none."""
    if trigger.id_field is None:
        return None
    return _scalar_field(payload, trigger.id_field, "id_field")


def message_event_id(
    trigger: TriggerSettings, payload: Mapping[str, Any], body: bytes, message_id: str | None
) -> str:
    """A message's id: its AMQP `message_id`, else the payload's `id_field`, else the
    SHA-256 of its body (identical bodies without ids count as one message)."""
    event_id = message_id or event_id_of(trigger, payload)
    if event_id is None:
        event_id = "sha256:" + hashlib.sha256(body).hexdigest()
    return event_id


def enqueue_request(
    trigger: TriggerSettings, payload: Mapping[str, Any], event_id: str | None
) -> EnqueueRequest:
    """The enqueue request a payload maps to; `InvalidInput` naming what is missing."""
    if trigger.content_field is None:
        content: Any = payload
    elif trigger.content_field in payload:
        content = payload[trigger.content_field]
    else:
        raise InvalidInput(f"payload has no field {trigger.content_field!r} (content_field)")
    key = None
    if trigger.key_field is not None:
        key = _scalar_field(payload, trigger.key_field, "key_field")
        if key is None:
            # A keyed trigger's payload without its key is malformed: a keyless job
            # would escape the kind's uniqueness rule.
            raise InvalidInput(f"payload has no field {trigger.key_field!r} (key_field)")
        try:
            msgspec.convert(key, BusinessKey)
        except msgspec.ValidationError:
            raise InvalidInput("the key must be 1 to 256 characters") from None
    return EnqueueRequest(
        content=msgspec.Raw(msgspec.json.encode(content)),
        request_id=None if event_id is None else request_id(trigger.name, event_id),
        key=key,
    )


@registry.check
def check_triggers(settings: Settings, kinds: Registry) -> None:
    """Refuse `[[triggers]]` that name an unknown kind (`ConfigError` naming the key)."""
    for index, trigger in enumerate(settings.triggers):
        if not trigger.name:
            raise ConfigError(f"triggers[{index}].name", "must not be empty")
        if trigger.kind not in kinds:
            known = (k.name for k in kinds)
            raise ConfigError(f"triggers[{index}].kind", unknown_kind(trigger.kind, known))
        if trigger.event in {"enqueue", "enqueue-batch"}:
            # POST /api/events/enqueue is the enqueue route of a kind called `events`.
            raise ConfigError(f"triggers[{index}].event", f"{trigger.event!r} is reserved")


def _reason(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 1] + "…"


# -- this node's triggers ------------------------------------------------------------


class Triggers:
    """This node's triggers, their counts since it started, and how they start jobs."""

    def __init__(self, settings: Settings, service: JobService) -> None:
        check_triggers(settings, service.registry)
        self.service = service
        self.key_prefix = settings.key_prefix
        self.triggers = {t.name: t for t in settings.triggers}
        self.counts = {name: _Counts() for name in self.triggers}
        self._by_event: dict[str, list[TriggerSettings]] = {}
        for trigger in settings.triggers:
            if trigger.event is not None:
                self._by_event.setdefault(trigger.event, []).append(trigger)

    def queue_of(self, trigger: TriggerSettings) -> str | None:
        """The RabbitMQ queue a message trigger consumes (None for an event trigger)."""
        if trigger.queue is not None:
            return trigger.queue
        if trigger.exchange is not None:
            return f"{self.key_prefix}trigger.{trigger.name}"
        return None

    def message_triggers(self) -> list[TriggerSettings]:
        """The triggers fed by RabbitMQ."""
        return [t for t in self.triggers.values() if t.event is None]

    def infos(self) -> list[TriggerInfo]:
        """Every trigger with its counts, by name."""
        return [
            TriggerInfo(
                name=t.name,
                kind=t.kind,
                event=t.event,
                queue=self.queue_of(t),
                received=self.counts[t.name].received,
                created=self.counts[t.name].created,
                existing=self.counts[t.name].existing,
                refused=self.counts[t.name].refused,
            )
            for t in sorted(self.triggers.values(), key=lambda t: t.name)
        ]

    async def _start(
        self,
        trigger: TriggerSettings,
        payload: Mapping[str, Any],
        event_id: str | None,
        *,
        way: TriggerType,
        headers: Mapping[str, str],
        incoming_at: datetime | None,
    ) -> tuple[Job, bool]:
        request = enqueue_request(trigger, payload, event_id)
        return await self.service.enqueue(
            trigger.kind,
            request,
            headers=headers,
            incoming_at=incoming_at,
            trigger=Trigger(way, trigger.name),
        )

    async def on_event(
        self,
        event: str,
        payload: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        incoming_at: datetime | None,
    ) -> list[TriggerItem]:
        """Start a job for each trigger listening for `event`; `NotFound` when none does.

        A backend outage or a full queue raises (the caller answers 503, and the
        sender may post again: with an id, nothing starts twice).
        """
        listeners = self._by_event.get(event)
        if not listeners:
            raise NotFound(f"no trigger listens for event {event!r}")
        expose = self.service.expose_tech_info
        items: list[TriggerItem] = []
        for trigger in listeners:
            counts = self.counts[trigger.name]
            counts.received += 1
            try:
                job, created = await self._start(
                    trigger,
                    payload,
                    event_id_of(trigger, payload),
                    way=TriggerType.EVENT,
                    headers=headers,
                    incoming_at=incoming_at,
                )
            except Overloaded:
                raise
            except ServiceError as exc:
                counts.count("refused")
                items.append(TriggerItem(trigger.name, "refused", None, exc.body()["error"]))
                continue
            outcome: Outcome = "created" if created else "existing"
            counts.count(outcome)
            items.append(
                TriggerItem(trigger.name, outcome, job.status(expose_tech_info=expose), None)
            )
        return items

    async def on_message(
        self, name: str, body: bytes, message_id: str | None, headers: Mapping[str, str]
    ) -> str | None:
        """Start the job of one message of trigger `name`.

        None when the job is stored or already exists (ack the message), else the
        readable reason it could not become a job (dead-letter it). Raises
        `BackendUnavailable` or `Overloaded` when it should be put back and tried
        again later.
        """
        trigger = self.triggers[name]
        counts = self.counts[name]
        counts.received += 1
        try:
            if json_too_deep(body):
                raise InvalidInput("the message is JSON nested deeper than 64 levels")
            payload = msgspec.json.decode(body)
            if not isinstance(payload, dict):
                raise InvalidInput("the message is not a JSON object")
            _, created = await self._start(
                trigger,
                payload,
                message_event_id(trigger, payload, body, message_id),
                way=TriggerType.MESSAGE,
                headers=headers,
                incoming_at=None,
            )
        except (BackendUnavailable, Overloaded):
            raise
        except msgspec.DecodeError as exc:
            reason = f"not JSON: {exc}"
        except ServiceError as exc:
            reason = f"refused ({exc.code}): {exc.message}"
        except Exception as exc:  # a bug must not block the queue
            log.exception("trigger %s: a message could not be handled", name)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        else:
            counts.count("created" if created else "existing")
            return None
        counts.count("refused")
        return _reason(reason)

    async def on_dead(
        self,
        name: str,
        body: bytes,
        message_id: str | None,
        headers: Mapping[str, str],
        reason: str,
    ) -> None:
        """Mirror a message of trigger `name` that went to the dead-letter queue in the
        dead letters the API lists (and may requeue); raises `BackendUnavailable`."""
        book = DeadLetterBook(self.service.store)
        await book.record_message(name, body, reason, message_id=message_id, headers=headers)


def _triggers_of(request: Request) -> Triggers | None:
    triggers: Triggers | None = getattr(request.app.state, "triggers", None)
    return triggers


# -- routes --------------------------------------------------------------------------


@registry.route("/api/events/{event:path}", methods=["POST"])
async def post_event(request: Request) -> Response:
    """POST /api/events/{event}: start the jobs of the triggers listening for it."""
    event = request.path_params["event"]
    triggers = _triggers_of(request)
    if triggers is None:
        raise NotFound(f"no trigger listens for event {event!r}")
    body = await read_body(request)
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(invalid_json(exc, body)) from None
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    items = await triggers.on_event(
        event,
        payload,
        headers=handler_headers(request),
        incoming_at=request.scope.get("state", {}).get("incoming_at"),
    )
    return json_response(EventAnswer(items))


@registry.route("/api/triggers", methods=["GET"])
async def list_triggers(request: Request) -> Response:
    """GET /api/triggers: every trigger with its counts since this node started."""
    triggers = _triggers_of(request)
    return json_response(TriggerList(triggers.infos() if triggers is not None else []))


registry.document(
    Operation(
        "POST",
        "/api/events/{event}",
        "Post an event: each trigger listening for it starts a job",
        "triggers",
        {
            200: Answer("One item per listening trigger", EventAnswer),
            404: Answer("No trigger listens for this event", ErrorBody),
        },
        [Param("event", "path", str, "The event's name")],
        body=dict[str, Any],
        description="The body, a JSON object, is the event's payload.",
    ),
    Operation(
        "GET",
        "/api/triggers",
        "The triggers and their counts since this node started",
        "triggers",
        {200: Answer("The triggers, by name", TriggerList)},
    ),
)


# -- lifespan ------------------------------------------------------------------------


@registry.lifespan
@asynccontextmanager
async def triggers_running(node: Node) -> AsyncIterator[None]:
    """Keep this node's triggers in `app.state.triggers`; consume the message triggers."""
    triggers = Triggers(node.settings, node.service)
    node.app.state.triggers = triggers
    fed_by_rabbitmq: Sequence[TriggerSettings] = triggers.message_triggers()
    try:
        if not fed_by_rabbitmq:
            yield
            return
        module = optional_backend("asyncproc.backends.amqp_triggers", "triggers", "rabbitmq")
        consumer = module.TriggerConsumer.from_settings(
            node.settings, fed_by_rabbitmq, triggers.on_message, on_dead=triggers.on_dead
        )
        async with consumer.running():
            yield
    finally:
        del node.app.state.triggers
