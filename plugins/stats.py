"""Built-in plugin: `GET /api/stats`, the overview of the whole cluster (API.md section 16).

Jobs per kind and state come from the store, which keeps those counts as records
change (`StateStore.count_states`). Jobs enqueued, succeeded and failed per minute
are counted by every node in memory, from the changes it writes, and added to the
store's per-minute counters every few seconds (`StateStore.add_minute_counts`): the
path of a job pays a dict increment, not a round trip. A node's answer adds what it
has not flushed yet; another node's last few seconds show after its next flush.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import json_response, service_of
from asyncproc.apidoc import Answer, Operation
from asyncproc.errors import BackendUnavailable
from asyncproc.hooks import Node
from asyncproc.interfaces import StateStore
from asyncproc.model import Job, JobState, utcnow
from asyncproc.registry import Registry

__all__ = ["MINUTES", "MinuteCounter", "Stats", "StatsMinute"]

registry = Registry()
log = logging.getLogger("asyncproc.stats")

MINUTES = 60  # the minutes `perMinute` shows, the current one last
FLUSH_EVERY = 5.0  # seconds between two flushes of a node's counts to the store
NAMES = ("enqueued", "succeeded", "failed")
_MINUTE = timedelta(minutes=1)
_COUNTED = frozenset({JobState.SUCCEEDED, JobState.FAILED})


def minute_of(moment: datetime) -> datetime:
    """The start of the UTC minute `moment` falls in."""
    return moment.replace(second=0, microsecond=0)


class MinuteCounter:
    """An after-change hook counting this node's enqueued, succeeded and failed jobs per
    minute until `flush` adds them to the store.

    The current minute's counts are three ints: a change pays a comparison of two times
    and an increment, no allocation; a new minute moves them to `pending`.
    """

    # Hooks.watches: no call for the other changes (progress, starts, stops).
    states = frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED})

    def __init__(self) -> None:
        self.pending: dict[tuple[datetime, str], int] = {}
        self._start = self._end = datetime.min.replace(tzinfo=UTC)
        self._current = dict.fromkeys(NAMES, 0)

    async def __call__(self, before: Job | None, after: Job) -> None:
        """Count `after` when it was just created, or just succeeded or failed."""
        if before is None:
            self.count("enqueued", after.created_at)
        elif after.state in _COUNTED and before.state is not after.state:
            self.count(after.state.value, after.finished_at or utcnow())

    def count(self, name: str, at: datetime) -> None:
        """Count one `name` at `at`."""
        if self._start <= at < self._end:
            self._current[name] += 1
            return
        if at >= self._end:
            self._close_minute()
            self._start = minute_of(at)
            self._end = self._start + _MINUTE
            self._current[name] += 1
            return
        slot = (minute_of(at), name)  # an earlier minute (a clock step back): rare
        self.pending[slot] = self.pending.get(slot, 0) + 1

    def _close_minute(self) -> None:
        for name, n in self._current.items():
            if n:
                slot = (self._start, name)
                self.pending[slot] = self.pending.get(slot, 0) + n
                self._current[name] = 0

    def unflushed(self) -> dict[tuple[datetime, str], int]:
        """What `flush` would add now, without taking it."""
        counts = dict(self.pending)
        for name, n in self._current.items():
            if n:
                slot = (self._start, name)
                counts[slot] = counts.get(slot, 0) + n
        return counts

    async def flush(self, store: StateStore) -> None:
        """Add what was counted to the store; kept for the next flush if it is down."""
        self._close_minute()
        if not self.pending:
            return
        counts, self.pending = self.pending, {}
        try:
            await store.add_minute_counts(counts)
        except BaseException:
            for slot, n in counts.items():
                self.pending[slot] = self.pending.get(slot, 0) + n
            raise


class StatsMinute(msgspec.Struct, frozen=True):
    """One minute of the overview: jobs enqueued, succeeded and failed in it."""

    at: datetime
    enqueued: int
    succeeded: int
    failed: int


class Stats(msgspec.Struct, frozen=True, rename="camel"):
    """`GET /api/stats`: jobs per kind and state, and the last hour minute by minute
    (oldest first, the current minute last), over the whole cluster."""

    kinds: dict[str, dict[str, int]]
    per_minute: list[StatsMinute]


async def stats(request: Request) -> Response:
    """GET /api/stats: what the page's overview draws."""
    service = service_of(request)
    store = service.store
    counts = await store.count_states(kind.name for kind in service.registry)
    first = minute_of(utcnow()) - (MINUTES - 1) * _MINUTE
    rows = await store.minute_counts(first, MINUTES)
    counter: MinuteCounter | None = getattr(request.app.state, "minute_counter", None)
    if counter is not None:
        for (minute, name), n in counter.unflushed().items():
            index = (minute - first) // _MINUTE
            if 0 <= index < MINUTES:
                rows[index][name] = rows[index].get(name, 0) + n
    per_minute = [
        StatsMinute(
            first + i * _MINUTE,
            row.get("enqueued", 0),
            row.get("succeeded", 0),
            row.get("failed", 0),
        )
        for i, row in enumerate(rows)
    ]
    kinds = {
        kind: {str(state): n for state, n in states.items()} for kind, states in counts.items()
    }
    return json_response(Stats(kinds, per_minute))


registry.route("/api/stats", methods=["GET"])(stats)
registry.document(
    Operation(
        "GET",
        "/api/stats",
        "Jobs per kind and state, and the last hour minute by minute (whole cluster)",
        "operations",
        {200: Answer("The overview", Stats)},
    )
)


@registry.lifespan
@asynccontextmanager
async def minute_counts(node: Node) -> AsyncIterator[None]:
    """Count this node's changes per minute and flush them to the store while it runs."""
    counter = MinuteCounter()
    hooks = node.service.hooks
    store = node.service.store
    hooks.after_change.append(counter)
    node.app.state.minute_counter = counter
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_flushing, counter, store)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
    finally:
        hooks.after_change.remove(counter)
        del node.app.state.minute_counter
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await counter.flush(store)
            except BackendUnavailable:
                log.warning("stats: the last per-minute counts could not be stored")


async def _flushing(counter: MinuteCounter, store: StateStore) -> None:
    while True:
        await anyio.sleep(FLUSH_EVERY)
        try:
            await counter.flush(store)
        except BackendUnavailable:
            continue  # kept: the next flush tries again
        except Exception:
            log.exception("stats: flushing the per-minute counts failed")
