"""Dead letters kept in the StateStore's documents (space `dead-letters`), API.md section 13.

One document per dead letter, named by its id (a new UUID4 hex): a job that failed
with `dead_letter`, a compensation job that failed for good, or a trigger message
that could not become a job. Every node reads the same ones, whatever its store.
A message body is kept whole for a requeue (up to `BODY_MAX`); the public
`payload` is its text, at most `PAYLOAD_MAX` bytes of it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import msgspec

from asyncproc.errors import BadRequest
from asyncproc.interfaces import StateStore
from asyncproc.lifecycle import DEAD_LETTER
from asyncproc.model import Job, JobState, utcnow
from asyncproc.service import new_job_id

__all__ = [
    "BODY_MAX",
    "PAYLOAD_MAX",
    "SPACE",
    "DeadLetter",
    "DeadLetterBook",
    "DeadLetterPage",
    "Stored",
    "is_dead",
]

SPACE = "dead-letters"
PAYLOAD_MAX = 64 * 1024
# A bigger message body is not kept for a requeue (it stays in RabbitMQ's dead-letter
# queue); the dead letter still shows its first PAYLOAD_MAX bytes.
BODY_MAX = 1024 * 1024
COMPENSATE_SUFFIX = ".compensate"

Source = Literal["job", "trigger"]


class DeadLetter(msgspec.Struct, frozen=True, rename="camel", omit_defaults=False):
    """A dead letter as the API shows it (API.md section 13)."""

    id: str
    source: Source
    reason: str
    at: datetime
    job_id: str | None
    trigger: str | None
    payload: str | None


class DeadLetterPage(msgspec.Struct, frozen=True):
    """`GET /api/dead-letters`: a page, newest first, and the cursor of the next."""

    items: list[DeadLetter]
    next: str | None


class Stored(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """The stored document: the public fields, and what a requeue of a message needs
    (its AMQP message id and headers; its body when `payload` is not all of it)."""

    letter: DeadLetter
    message_id: str | None = None
    headers: dict[str, str] = {}
    body: bytes | None = None
    body_kept: bool = True

    def message_body(self) -> bytes | None:
        """The whole message body, or None when it was too big to keep."""
        if self.body is not None:
            return self.body
        if not self.body_kept or self.letter.payload is None:
            return None
        return self.letter.payload.encode()


_decoder = msgspec.json.Decoder(Stored)


def is_dead(before: Job | None, after: Job) -> bool:
    """True when this change makes `after` a dead letter: it just failed, with
    `dead_letter` (lost too often), or it is a compensation that failed for good."""
    if after.state is not JobState.FAILED or (before is not None and before.state is after.state):
        return False
    error_id = after.error.error_id if after.error is not None else None
    return error_id == DEAD_LETTER or after.kind.endswith(COMPENSATE_SUFFIX)


def _text(data: bytes) -> tuple[str, bool]:
    """The first PAYLOAD_MAX bytes of `data` as text (cut on a character boundary,
    undecodable bytes replaced), and whether that is exactly all of `data`."""
    head = data[:PAYLOAD_MAX]
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        if len(data) > PAYLOAD_MAX and exc.start >= PAYLOAD_MAX - 3:
            text = head[: exc.start].decode()  # a character cut in two by the limit
        else:
            text = head.decode(errors="replace")
        return text, False
    return text, len(data) <= PAYLOAD_MAX


def _reason_of(job: Job) -> str:
    error = job.error
    if error is None:
        return "failed"
    detail = error.tech_msg or error.biz_msg
    return f"{error.error_id or 'failed'}: {detail}" if detail else error.error_id or "failed"


def _cursor(letter: DeadLetter) -> str:
    raw = f"{letter.at.isoformat()}|{letter.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _after(cursor: str) -> tuple[datetime, str]:
    try:
        at, _, letter_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError(at)
        return moment, letter_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not one this service handed out") from None


class DeadLetterBook:
    """The dead letters of one StateStore: record, page through, read, delete."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def _put(self, stored: Stored) -> DeadLetter:
        await self.store.put_doc(SPACE, stored.letter.id, msgspec.json.encode(stored), expected=0)
        return stored.letter

    async def record_job(self, job: Job) -> DeadLetter:
        """Keep `job` (just failed for good) as a dead letter; its content is the payload."""
        payload, _ = _text(bytes(job.content))
        letter = DeadLetter(
            id=new_job_id(),
            source="job",
            reason=_reason_of(job),
            at=job.finished_at or utcnow(),
            job_id=job.id,
            trigger=None,
            payload=payload,
        )
        return await self._put(Stored(letter))

    async def record_message(
        self,
        trigger: str,
        body: bytes,
        reason: str,
        *,
        message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> DeadLetter:
        """Keep a trigger message that could not become a job."""
        payload, whole = _text(body)
        letter = DeadLetter(
            id=new_job_id(),
            source="trigger",
            reason=reason,
            at=utcnow(),
            job_id=None,
            trigger=trigger,
            payload=payload,
        )
        kept = whole or len(body) <= BODY_MAX
        stored = Stored(
            letter,
            message_id=message_id,
            headers=dict(headers or {}),
            body=None if whole or not kept else body,
            body_kept=kept,
        )
        return await self._put(stored)

    async def get(self, letter_id: str) -> Stored | None:
        """The stored dead letter, or None."""
        doc = await self.store.get_doc(SPACE, letter_id)
        return None if doc is None else _decoder.decode(doc.data)

    async def delete(self, letter_id: str) -> bool:
        """Delete a dead letter; True when there was one."""
        return await self.store.delete_doc(SPACE, letter_id)

    async def page(self, limit: int, cursor: str | None = None) -> DeadLetterPage:
        """Up to `limit` dead letters, newest first (ties by id), after `cursor`."""
        after = _after(cursor) if cursor else None
        docs = await self.store.list_docs(SPACE)
        letters = [_decoder.decode(doc.data).letter for doc in docs.values()]
        if after is not None:
            letters = [letter for letter in letters if (letter.at, letter.id) < after]
        letters.sort(key=lambda letter: (letter.at, letter.id), reverse=True)
        more = len(letters) > limit
        items = letters[:limit]
        return DeadLetterPage(items, _cursor(items[-1]) if more else None)
