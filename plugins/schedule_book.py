"""The stored schedules (API.md section 12): their shape, validation and updates.

Schedules live in the StateStore's document store (space `schedules`, one
document per name), so every node reads the same. Every update is a
read-modify-compare-and-set, retried when another node wrote in between; what a
tick did is merged (one entry per tick, `created` winning over the other
outcomes), so two nodes recording the same tick leave one entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import msgspec

from asyncproc.errors import InvalidInput, ServiceError
from asyncproc.messages import unknown_kind
from asyncproc.model import utcnow
from asyncproc.registry import Registry
from asyncproc.schedule_times import Catchup, Overlap, Timing, TimingError
from asyncproc.service import JobService

__all__ = [
    "Definition",
    "Run",
    "Schedule",
    "ScheduleBook",
    "ScheduleInvalid",
    "StoredSchedule",
    "check_name",
    "define",
]

SPACE = "schedules"
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
RECENT = 20
# Outcomes of a tick, by precedence when two nodes recorded different ones.
_RANK = {"skipped": 0, "refused": 1, "created": 2}


class Run(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """What one tick (or a manual trigger) did: `created`, `skipped` or `refused`."""

    at: datetime
    job_id: str | None
    outcome: Literal["created", "skipped", "refused"]
    error: dict[str, Any] | None = None


class Schedule(msgspec.Struct, frozen=True, rename="camel"):
    """A schedule as the API shows it (durations in seconds)."""

    name: str
    kind: str
    content: msgspec.Raw
    key: str | None
    cron: str | None
    every: float | None
    timezone: str
    overlap: Overlap
    catchup: Catchup
    catchup_window: float
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    source: Literal["config", "api"]
    recent: tuple[Run, ...]


class StoredSchedule(Schedule, frozen=True, kw_only=True):
    """The stored document: the schedule plus the id of its latest job."""

    last_job_id: str | None = None

    @property
    def timing(self) -> Timing:
        """When it ticks."""
        return Timing(cron=self.cron, every=self.every, timezone=self.timezone)

    def public(self) -> Schedule:
        """The API view."""
        return Schedule(**{f: getattr(self, f) for f in Schedule.__struct_fields__})


class ScheduleInvalid(ValueError):
    """Raised when a schedule's definition is malformed; `field` (snake_case) names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Definition(msgspec.Struct, frozen=True):
    """What a PUT or a `[[schedules]]` table sets: a schedule without its run state."""

    kind: str
    content: msgspec.Raw
    key: str | None
    timing: Timing
    overlap: Overlap
    catchup: Catchup
    catchup_window: float
    paused: bool


def check_name(name: str) -> None:
    """Raise `ScheduleInvalid` unless `name` matches `[A-Za-z0-9._-]{1,64}`."""
    if not NAME.fullmatch(name):
        raise ScheduleInvalid("name", f"{name!r} does not match [A-Za-z0-9._-]{{1,64}}")


def define(
    kinds: Registry,
    *,
    kind: str,
    content: bytes,
    key: str | None,
    cron: str | None,
    every: float | None,
    timezone: str,
    overlap: str,
    catchup: str,
    catchup_window: float,
    paused: bool,
) -> Definition:
    """A checked definition; raises `ScheduleInvalid` naming the first bad field."""
    try:
        timing = Timing(cron=cron, every=every, timezone=timezone)
    except TimingError as exc:
        raise ScheduleInvalid(exc.field, exc.message) from None
    if overlap not in Overlap.__members__.values():
        raise ScheduleInvalid("overlap", f"{overlap!r}: expected skip, allow or replace")
    if catchup not in Catchup.__members__.values():
        raise ScheduleInvalid("catchup", f"{catchup!r}: expected skip, one or all")
    if not catchup_window >= 0:
        raise ScheduleInvalid("catchup_window", "must be 0 or more seconds")
    if key is not None and not 1 <= len(key) <= 256:
        raise ScheduleInvalid("key", "must be 1 to 256 characters")
    if kind not in kinds:
        raise ScheduleInvalid("kind", unknown_kind(kind, (k.name for k in kinds)))
    try:
        kinds.get(kind).decode_content(content)
    except ServiceError as exc:
        # The kind's message already names `content` (`content.n: expected ...`).
        raise ScheduleInvalid("content", exc.message) from None
    return Definition(
        kind=kind,
        content=msgspec.Raw(content),
        key=key,
        timing=timing,
        overlap=Overlap(overlap),
        catchup=Catchup(catchup),
        catchup_window=float(catchup_window),
        paused=paused,
    )


_decoder = msgspec.json.Decoder(StoredSchedule)
_encoder = msgspec.json.Encoder()


def merge_runs(recent: tuple[Run, ...], runs: list[Run]) -> tuple[Run, ...]:
    """`recent` with `runs` added: one entry per time, the higher outcome kept,
    newest first, at most 20."""
    by_at = {run.at: run for run in recent}
    for run in runs:
        known = by_at.get(run.at)
        if known is None or _RANK[run.outcome] > _RANK[known.outcome]:
            by_at[run.at] = run
    return tuple(sorted(by_at.values(), key=lambda r: r.at, reverse=True)[:RECENT])


class ScheduleBook:
    """Read and change the stored schedules of one StateStore."""

    def __init__(self, service: JobService, clock: Callable[[], datetime] = utcnow) -> None:
        self.service = service
        self.store = service.store
        self.clock = clock

    @staticmethod
    def decode(data: bytes) -> StoredSchedule:
        """A stored document's schedule."""
        return _decoder.decode(data)

    async def get(self, name: str) -> StoredSchedule | None:
        """The schedule called `name`, or None."""
        doc = await self.store.get_doc(SPACE, name)
        return None if doc is None else self.decode(doc.data)

    async def read_all(self) -> list[StoredSchedule]:
        """Every schedule, by name."""
        return [self.decode(doc.data) for doc in (await self.store.list_docs(SPACE)).values()]

    async def put(
        self, name: str, definition: Definition, source: Literal["config", "api"]
    ) -> tuple[StoredSchedule, bool]:
        """Create or replace `name`; `(schedule, created)`. Its run history stays, and so
        does `nextRunAt` while the timing is the same (no tick is lost or repeated)."""
        while True:
            doc = await self.store.get_doc(SPACE, name)
            current = None if doc is None else self.decode(doc.data)
            schedule = self._defined(name, definition, source, current)
            expected = 0 if doc is None else doc.version
            if await self.store.put_doc(SPACE, name, _encoder.encode(schedule), expected=expected):
                return schedule, current is None

    def _defined(
        self,
        name: str,
        definition: Definition,
        source: Literal["config", "api"],
        current: StoredSchedule | None,
    ) -> StoredSchedule:
        timing = definition.timing
        if definition.paused:
            next_run = None
        elif current is not None and current.next_run_at is not None and current.timing == timing:
            next_run = current.next_run_at
        else:
            next_run = timing.next_after(self.clock())
        return StoredSchedule(
            name=name,
            kind=definition.kind,
            content=definition.content,
            key=definition.key,
            cron=timing.cron,
            every=timing.every,
            timezone=timing.timezone,
            overlap=definition.overlap,
            catchup=definition.catchup,
            catchup_window=definition.catchup_window,
            paused=definition.paused,
            next_run_at=next_run,
            last_run_at=None if current is None else current.last_run_at,
            source=source,
            recent=() if current is None else current.recent,
            last_job_id=None if current is None else current.last_job_id,
        )

    async def delete(self, name: str) -> bool:
        """Delete `name`; True when it existed."""
        return await self.store.delete_doc(SPACE, name)

    async def update(
        self, name: str, change: Callable[[StoredSchedule], StoredSchedule]
    ) -> StoredSchedule | None:
        """Apply `change` to the stored schedule by compare-and-set, retried until it
        lands; the schedule after it, or None when there is none."""
        while True:
            doc = await self.store.get_doc(SPACE, name)
            if doc is None:
                return None
            current = self.decode(doc.data)
            changed = change(current)
            if changed == current:
                return current
            if await self.store.put_doc(
                SPACE, name, _encoder.encode(changed), expected=doc.version
            ):
                return changed

    async def set_paused(self, name: str, paused: bool) -> StoredSchedule | None:
        """Pause (no ticks, `nextRunAt` null) or resume (from the next tick after now)."""

        def change(schedule: StoredSchedule) -> StoredSchedule:
            if schedule.paused == paused:
                return schedule
            next_run = None if paused else schedule.timing.next_after(self.clock())
            return msgspec.structs.replace(schedule, paused=paused, next_run_at=next_run)

        return await self.update(name, change)

    async def record(
        self, name: str, runs: list[Run], next_run: datetime | None = None
    ) -> StoredSchedule | None:
        """Add what ticks did and move `nextRunAt` forward to `next_run` (never back)."""

        def change(schedule: StoredSchedule) -> StoredSchedule:
            recent = merge_runs(schedule.recent, runs)
            last_run, last_job = schedule.last_run_at, schedule.last_job_id
            for run in runs:
                if run.outcome == "created" and (last_run is None or run.at >= last_run):
                    last_run, last_job = run.at, run.job_id
            next_run_at = schedule.next_run_at
            if next_run is not None and next_run_at is not None and next_run > next_run_at:
                next_run_at = next_run
            return msgspec.structs.replace(
                schedule,
                recent=recent,
                last_run_at=last_run,
                last_job_id=last_job,
                next_run_at=next_run_at,
            )

        return await self.update(name, change)


def invalid_input(exc: ScheduleInvalid) -> InvalidInput:
    """The 422 of a bad definition, naming the field as the API spells it."""
    field = {"catchup_window": "catchupWindow"}.get(exc.field, exc.field)
    named = exc.message.startswith((f"{field}:", f"{field}.", f"{field}["))
    return InvalidInput(exc.message if named else f"{field}: {exc.message}", field=field)
