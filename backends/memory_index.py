"""The memory store's job list index: a page costs about its own size, not the number
of jobs held (API.md section 2, `GET /api/jobs`).

Jobs are kept in (createdAt, id) order in one list (appended as they come; an entry of a
dropped job is skipped and the list compacted once half of it is dead), and by state,
kind, key, parent and owner in sets. A page either walks the order backwards from its cursor,
keeping the jobs that match, or, when a filter's set is small, picks the newest of that
set: whichever reads fewer jobs.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from asyncproc.interfaces import JobQuery, Page, cursor_of
from asyncproc.model import Job, JobState

__all__ = ["JobIndex"]

Entry = tuple[datetime, str]


def _newest_first(job: Job) -> Entry:
    return job.created_at, job.id


class JobIndex:
    """Where to find the jobs a list query asks for, newest first."""

    def __init__(self) -> None:
        self._order: list[Entry] = []
        self._dead = 0
        self._by_state: dict[JobState, set[str]] = {state: set() for state in JobState}
        self._by_kind: dict[str, set[str]] = {}
        self._by_key: dict[str, set[str]] = {}
        self._by_parent: dict[str, set[str]] = {}
        self._by_owner: dict[str, set[str]] = {}

    def add(self, job: Job) -> None:
        """Index a new job."""
        entry = (job.created_at, job.id)
        order = self._order
        if not order or entry > order[-1]:
            order.append(entry)
        else:  # a clock stepped back, an id sorting below its twin's, or an id used again
            at = bisect_left(order, entry)
            if at < len(order) and order[at] == entry:
                self._dead -= 1  # a dropped job's entry, which now stands for this one
            else:
                order.insert(at, entry)
        self._by_state[job.state].add(job.id)
        self._by_kind.setdefault(job.kind, set()).add(job.id)
        if job.key is not None:
            self._by_key.setdefault(job.key, set()).add(job.id)
        if job.parent_id is not None:
            self._by_parent.setdefault(job.parent_id, set()).add(job.id)
        if job.owner is not None:
            self._by_owner.setdefault(job.owner, set()).add(job.id)

    def moved(self, before: Job, after: Job) -> None:
        """`before` changed into `after` (the state is the only indexed field that changes)."""
        if before.state is not after.state:
            self._by_state[before.state].discard(before.id)
            self._by_state[after.state].add(after.id)

    def remove(self, job: Job, alive: Callable[[Entry], bool]) -> None:
        """Forget `job`; `alive(entry)` tells the order's live entries when compacting."""
        self._by_state[job.state].discard(job.id)
        _discard(self._by_kind, job.kind, job.id)
        if job.key is not None:
            _discard(self._by_key, job.key, job.id)
        if job.parent_id is not None:
            _discard(self._by_parent, job.parent_id, job.id)
        if job.owner is not None:
            _discard(self._by_owner, job.owner, job.id)
        self._dead += 1
        if self._dead > 1024 and self._dead * 2 > len(self._order):
            self._order = [entry for entry in self._order if alive(entry)]
            self._dead = 0

    def _candidates(self, query: JobQuery) -> set[str] | None:
        """The smallest indexed set that holds every job the query can match."""
        sets: list[set[str]] = []
        if query.state is not None:
            sets.append(self._by_state[query.state])
        if query.kind is not None:
            sets.append(self._by_kind.get(query.kind, set()))
        if query.key is not None:
            sets.append(self._by_key.get(query.key, set()))
        if query.parent is not None:
            sets.append(self._by_parent.get(query.parent, set()))
        if query.owner is not None:
            sets.append(self._by_owner.get(query.owner, set()))
        return min(sets, key=len) if sets else None

    def page(
        self, query: JobQuery, get: Callable[[str], Job | None], keep: Callable[[Job], bool]
    ) -> Page:
        """A page of `query`: jobs found by id with `get`, kept when `keep(job)` (alive)."""
        after = query.after()
        want = query.limit + 1
        candidates = self._candidates(query)
        # Walking the order reads about want * total / matching entries; picking from a
        # set reads all of it: pick when the set is the cheaper read.
        if candidates is not None and len(candidates) <= max(
            256, math.isqrt(want * max(1, len(self._order)))
        ):
            found: Iterable[Job] = self._from(candidates, query, after, get, keep)
            items = heapq.nlargest(want, found, key=_newest_first)
        else:
            items = []
            for job in self._walk(query, after, get, keep):
                items.append(job)
                if len(items) == want:
                    break
        more = len(items) > query.limit
        items = items[: query.limit]
        return Page(items=items, next=cursor_of(items[-1]) if more else None)

    @staticmethod
    def _from(
        ids: set[str],
        query: JobQuery,
        after: Entry | None,
        get: Callable[[str], Job | None],
        keep: Callable[[Job], bool],
    ) -> Iterator[Job]:
        for job_id in ids:
            job = get(job_id)
            if (
                job is not None
                and (after is None or (job.created_at, job.id) < after)
                and query.matches(job)
                and keep(job)
            ):
                yield job

    def _walk(
        self,
        query: JobQuery,
        after: Entry | None,
        get: Callable[[str], Job | None],
        keep: Callable[[Job], bool],
    ) -> Iterator[Job]:
        order = self._order
        position = len(order) if after is None else bisect_left(order, after)
        for index in range(position - 1, -1, -1):
            created, job_id = order[index]
            job = get(job_id)
            if job is None or job.created_at != created:
                continue  # dropped (or its id reused later: that entry is elsewhere)
            if query.matches(job) and keep(job):
                yield job


def _discard(index: dict[str, set[str]], name: str, job_id: str) -> None:
    ids = index.get(name)
    if ids is not None:
        ids.discard(job_id)
        if not ids:
            del index[name]
