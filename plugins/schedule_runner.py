"""Firing schedules: the scheduler loop of a node with `scheduler = true`, and the
start of one schedule's job (a tick's, or a manual trigger's).

Any number of nodes may run the loop. Each polls the stored schedules a few
times a second and fires the ticks that are due; a tick's job has a `requestId`
derived from the schedule's name and the tick's time, so the enqueues of several
nodes collapse into one job, and what they record is merged per tick.

To tell ticks a running scheduler owes from ticks missed while none ran (the
catch-up), the running schedulers keep one small document, the current `Era`:
since when some scheduler has run without a pause over `GRACE` (each stamps it
about once a second) and when the one before ended; ticks in between were missed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

import anyio
import msgspec

from asyncproc.errors import BackendUnavailable, JobNotFound, JobStateConflict, ServiceError
from asyncproc.model import Job, OnConflict, Trigger, TriggerType, Uniqueness
from asyncproc.schedule_times import Era, Overlap, next_era, plan, tick_request_id
from asyncproc.service import EnqueueRequest, JobService

from .schedule_book import Run, ScheduleBook, StoredSchedule

__all__ = ["Scheduler", "count_runs", "start_job"]

log = logging.getLogger("asyncproc.schedules")

POLL = 0.2  # seconds between polls: a tick's job is enqueued well within 1 s
BEAT = 1.0  # seconds between two stamps of one scheduler
ERA = ("scheduler", "era")

_era_decoder = msgspec.json.Decoder(Era)
_era_encoder = msgspec.json.Encoder()


async def start_job(
    service: JobService, schedule: StoredSchedule, *, request_id: str | None, at: datetime
) -> tuple[Run, Job]:
    """Start a job of `schedule` under its overlap rule: what happened (for `recent`)
    and the job that answers (the new one, or the active one it skipped for).
    `request_id` None: a new id (a manual trigger). A refused enqueue raises its
    `ServiceError`."""
    previous = None
    if schedule.last_job_id is not None and schedule.last_job_id != request_id:
        previous = await service.store.get(schedule.last_job_id)
    active = previous if previous is not None and not previous.state.terminal else None
    if active is not None and schedule.overlap is Overlap.SKIP:
        return Run(at=at, job_id=active.id, outcome="skipped"), active
    on_conflict, after = None, None
    if schedule.overlap is Overlap.REPLACE:
        kind = service.registry.get(schedule.kind) if schedule.kind in service.registry else None
        if schedule.key is not None and kind is not None and kind.uniqueness is not Uniqueness.NONE:
            on_conflict = OnConflict.REPLACE  # the key's rule stops the holder
        elif active is not None:
            after = active.id
    request = EnqueueRequest(
        content=schedule.content,
        request_id=request_id,
        key=schedule.key,
        on_conflict=on_conflict,
    )
    # With `after`, the worker starts the new job only once the previous one is terminal.
    job, created = await service.enqueue(
        schedule.kind, request, trigger=Trigger(TriggerType.SCHEDULE, schedule.name), after=after
    )
    if after is not None:
        with contextlib.suppress(JobStateConflict, JobNotFound):
            await service.stop(after)
    ours = created or (request_id is not None and job.id == request_id)
    # Not ours: the key's holder answered (`onConflict: existing`), nothing new runs.
    return Run(at=at, job_id=job.id, outcome="created" if ours else "skipped"), job


def count_runs(counts: dict[tuple[str, str], int], name: str, runs: list[Run]) -> None:
    """Add the outcomes of `runs` of schedule `name` to `counts`."""
    for run in runs:
        slot = (name, run.outcome)
        counts[slot] = counts.get(slot, 0) + 1


class Scheduler:
    """The loop that fires due ticks; `poll` once is one pass over the schedules."""

    def __init__(
        self,
        book: ScheduleBook,
        *,
        clock: Callable[[], datetime] | None = None,
        poll_interval: float = POLL,
        runs: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.book = book
        # (schedule, outcome) -> the runs this node started (`asyncproc_schedule_runs_total`).
        self.runs = runs if runs is not None else {}
        self.service = book.service
        self.store = book.store
        self.clock = clock or book.clock
        self.poll_interval = poll_interval
        self._stamped: datetime | None = None

    async def run(self) -> None:
        """Poll until cancelled; a failing pass is logged and retried."""
        while True:
            try:
                delay = await self.poll()
            except BackendUnavailable as exc:
                log.warning("schedules: %s; retrying", exc)
                delay = 1.0
            except Exception:
                log.exception("schedules: a scheduler pass failed")
                delay = 1.0
            await anyio.sleep(delay)

    async def poll(self) -> float:
        """Fire every due tick; the seconds until the next poll is needed."""
        now = self.clock()
        missed = (await self._stamp(now)).missed()
        wait = self.poll_interval
        for schedule in await self.book.read_all():
            next_run = schedule.next_run_at
            if schedule.paused or next_run is None:
                continue
            if next_run <= now:
                await self.fire(schedule, now, missed)
            else:
                wait = min(wait, (next_run - now).total_seconds())
        return max(wait, 0.01)

    async def fire(
        self, schedule: StoredSchedule, now: datetime, missed: tuple[datetime, datetime]
    ) -> None:
        """Start the jobs of the ticks of `schedule` due at `now` and record them."""
        assert schedule.next_run_at is not None
        ticks, next_run = plan(
            schedule.timing,
            next_run=schedule.next_run_at,
            now=now,
            missed=missed,
            catchup=schedule.catchup,
            window=schedule.catchup_window,
        )
        runs: list[Run] = []
        current = schedule
        for tick in ticks:
            request_id = tick_request_id(schedule.name, tick)
            try:
                run, _ = await start_job(self.service, current, request_id=request_id, at=tick)
            except ServiceError as exc:
                run = Run(at=tick, job_id=None, outcome="refused", error=exc.body()["error"])
            except BackendUnavailable:
                raise  # nothing recorded: the next poll fires the same ticks again
            except Exception as exc:
                log.exception("schedules: tick %s of %s failed", tick, schedule.name)
                error = {"code": "internal", "message": str(exc) or type(exc).__name__}
                run = Run(at=tick, job_id=None, outcome="refused", error=error)
            runs.append(run)
            if run.outcome == "created":
                current = msgspec.structs.replace(current, last_job_id=run.job_id)
        await self.book.record(schedule.name, runs, next_run)
        count_runs(self.runs, schedule.name, runs)

    async def _stamp(self, now: datetime) -> Era:
        """The era this poll runs in, after stamping it (at most once per `BEAT`)."""
        for _ in range(3):
            doc = await self.store.get_doc(*ERA)
            seen = None if doc is None else _era_decoder.decode(doc.data)
            era = next_era(seen, now)
            fresh = self._stamped is not None and (now - self._stamped).total_seconds() < BEAT
            if seen is not None and era.since == seen.since and fresh:
                return era
            expected = 0 if doc is None else doc.version
            if await self.store.put_doc(*ERA, _era_encoder.encode(era), expected=expected):
                self._stamped = now
                return era
        return era  # stamped by others meanwhile: theirs will do
