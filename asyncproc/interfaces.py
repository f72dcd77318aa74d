"""The two backend interfaces, `StateStore` and `Queue`, and what they exchange.

The docstrings of the abstract methods are the contract every implementation
keeps; `tests/contract/` checks it against each one. Both support `async with`
and `aclose()`.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import NamedTuple, Protocol, Self, runtime_checkable

import msgspec

from .changes import ChangeHub
from .errors import BadRequest
from .lifecycle import Event
from .limits import Limits
from .model import Job, JobState, OnConflict, Uniqueness

__all__ = [
    "Created",
    "Delivery",
    "Doc",
    "JobQuery",
    "Page",
    "Queue",
    "StateStore",
    "StopsTaking",
]


class JobQuery(msgspec.Struct, frozen=True):
    """Filter and page of the job list: newest first, ties by id (descending)."""

    kind: str | None = None
    state: JobState | None = None
    key: str | None = None
    parent: str | None = None
    limit: int = 50
    cursor: str | None = None
    # The name of the token that enqueued the jobs (API.md section 15).
    owner: str | None = None

    def after(self) -> tuple[datetime, str] | None:
        """The (createdAt, id) position the cursor points past, or None for page one."""
        if self.cursor is None:
            return None
        try:
            created, _, job_id = (
                base64.urlsafe_b64decode(self.cursor.encode()).decode().partition("|")
            )
            moment = datetime.fromisoformat(created)
            if moment.tzinfo is None:  # stored times are aware: comparing would raise
                raise ValueError(created)
            return moment, job_id
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise BadRequest("cursor is not one this service handed out") from None

    def matches(self, job: Job) -> bool:
        """True when `job` passes the kind, state, key, parent and owner filters."""
        return (
            (self.kind is None or job.kind == self.kind)
            and (self.state is None or job.state == self.state)
            and (self.key is None or job.key == self.key)
            and (self.parent is None or job.parent_id == self.parent)
            and (self.owner is None or job.owner == self.owner)
        )


def cursor_of(job: Job) -> str:
    """The opaque cursor that resumes a listing after `job`."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


class Page(msgspec.Struct, frozen=True):
    """One page of the job list and the cursor of the next (None on the last)."""

    items: list[Job]
    next: str | None


class Created(NamedTuple):
    """What `StateStore.insert` did: the record that answers, whether it is new, and
    the key's previous holder before and after it was stopped (`replace`), if any."""

    job: Job
    created: bool
    replaced: tuple[Job, Job] | None = None


class Doc(NamedTuple):
    """A small stored document (a schedule, ...) and its version, for compare-and-set."""

    data: bytes
    version: int


class _Closable:
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release connections and background tasks; idempotent."""


class StateStore(_Closable, ABC):
    """Job records, results, change notifications and stop signals.

    Every record change goes through `lifecycle.apply`; a store only makes the
    read-apply-write atomic and publishes a `Change` to `hub` on every node.
    """

    name: str
    hub: ChangeHub

    async def start(self) -> None:
        """Connect and start background tasks (pub/sub listener); called once."""

    @abstractmethod
    async def ping(self) -> None:
        """Return when the server answers; raise `BackendUnavailable` when it does not."""

    @abstractmethod
    async def insert(
        self,
        job: Job,
        *,
        uniqueness: Uniqueness = Uniqueness.NONE,
        on_conflict: OnConflict = OnConflict.REJECT,
    ) -> Created:
        """Store a new queued `job` unless one with its id exists, atomically.

        Answers `Created(stored record, True)` when created, `(existing record,
        False)` when the id exists (whatever its kind). With a `key` and a rule other
        than `none`, a job of the same kind may hold the key (`rules.holds_key`:
        `active` is held by queued or running jobs, `once` also by a succeeded job
        until `release_key`); then `on_conflict` decides, in the same atomic step:
        `reject` raises `KeyConflict` (with `jobId`); `existing` answers `(holder,
        False)`; `replace` stops the holder (`rules.replace_event`: a queued one at
        once, a running one by a stop request; a succeeded `once` holder is released),
        stores `job` as the key's holder with `after` = the old holder's id while it
        is not terminal, and reports the holder's change in `replaced`. Publishes a
        change for every record written.
        """

    async def create(
        self,
        job: Job,
        *,
        uniqueness: Uniqueness = Uniqueness.NONE,
        on_conflict: OnConflict = OnConflict.REJECT,
    ) -> tuple[Job, bool]:
        """`insert` without the replaced holder: `(record, created)`."""
        outcome = await self.insert(job, uniqueness=uniqueness, on_conflict=on_conflict)
        return outcome.job, outcome.created

    @abstractmethod
    async def forget(self, job: Job) -> bool:
        """Delete a `queued` record as if it had never been stored (its indexes and its
        key hold with it), atomically: for an enqueue whose message could not be queued,
        so that the same request can be sent again. False (nothing deleted) when the
        record is gone or no longer the one given (its `version` moved on)."""

    @abstractmethod
    async def key_holder(self, kind: str, key: str) -> Job | None:
        """The job that holds `key` of `kind` under its rule now, or None."""

    @abstractmethod
    async def get(self, job_id: str) -> Job | None:
        """The record, or None when unknown or expired (terminal and past retention)."""

    @abstractmethod
    async def change(
        self,
        job_id: str,
        event: Event,
        *,
        result: bytes | None = None,
        now: datetime | None = None,
        by_runner: bool = False,
    ) -> tuple[Job, Job]:
        """Apply `event` atomically; return the record before and after.

        Raises `JobNotFound` for an unknown or expired id and `TransitionRefused`
        (carrying the current record) when the lifecycle refuses. `result` is
        stored with a `Succeed` event in the same atomic step. A change that
        changes nothing writes nothing (and answers the same record twice); every
        write bumps `version` and publishes a `Change` (to the nodes `rules.must_tell`
        names; `by_runner`: the node running the job ends its own attempt). A
        terminal record (and its result) expires `retention` after `finishedAt`.
        """

    async def transition(
        self, job_id: str, event: Event, *, result: bytes | None = None, now: datetime | None = None
    ) -> Job:
        """`change`, answering only the record after it."""
        return (await self.change(job_id, event, result=result, now=now))[1]

    @abstractmethod
    async def get_result(self, job_id: str) -> bytes | None:
        """The stored result bytes of a succeeded job, or None."""

    @abstractmethod
    async def list_jobs(self, query: JobQuery) -> Page:
        """Jobs matching `query`, newest first (ties by id); each job once across pages."""

    @abstractmethod
    async def release_key(self, kind: str, key: str) -> bool:
        """Let a `once` key be used again; True when a succeeded job held it."""

    @abstractmethod
    async def overdue(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of unfinished jobs whose processing deadline is before `now`."""

    @abstractmethod
    async def unfinished(self, limit: int = 200) -> list[str]:
        """Ids of up to `limit` unfinished (queued or running) jobs, earliest deadline first."""

    @abstractmethod
    async def purge_expired(self, now: datetime) -> int:
        """Drop terminal records past retention (a no-op where the server expires keys)."""

    # -- what a queue message may carry ------------------------------------------------

    def hint(self, job: Job) -> bytes:
        """What this store knows of `job` just written, for its queue message to carry
        (b"" for nothing): the worker's store takes it as its first read of the job
        (`take_hint`) and saves a round trip. Only a guess there: every write still
        checks that the record is the one stored."""
        return b""

    def take_hint(self, job_id: str, hint: bytes) -> None:
        """Take `hint` (from `hint` on another node) as what `job_id` probably is."""

    # -- leases of running jobs -------------------------------------------------------

    @abstractmethod
    async def hold_lease(self, job_ids: Sequence[str], until: datetime) -> None:
        """Give (or renew) the running jobs `job_ids` a lease until `until`. A store may
        return before the server confirmed it: leases are advisory (a job whose lease
        never landed is taken over when its message is redelivered)."""

    @abstractmethod
    async def drop_lease(self, job_id: str) -> None:
        """Forget a job's lease (it left `running` on this node)."""

    @abstractmethod
    async def lease_of(self, job_id: str) -> datetime | None:
        """When the job's lease lapses, or None when it holds none."""

    @abstractmethod
    async def lapsed(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of jobs whose lease lapsed before `now` (they may have ended since)."""

    # -- start limits of kinds (max_concurrency, rate_limit) ----------------------------

    @abstractmethod
    async def acquire_start(
        self,
        kind: str,
        job_id: str,
        holder: str,
        limits: Limits,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> float:
        """Take a start permit of `kind` for `job_id`, atomically across every node:
        0.0 when granted, else the seconds to wait before trying again (`limits.start_wait`
        decides), or minus the seconds until the job's fallback message is due when this
        is a spare copy of it (`limits.spare_copy`: a wake that lost the race, a
        duplicate), to be dropped.

        Permits lapse at their `lease_until` unless renewed (`renew_starts`), so a dead
        holder's come back; `holder` (unique per attempt to start) names the permit. A
        grant counts as a start in the rate window at `now`. A job refused because the
        kind's `max_concurrency` is reached joins its waiters (oldest first), which
        `release_start` wakes; a grant removes it.
        """

    @abstractmethod
    async def release_start(self, kind: str, holder: str) -> str | None:
        """Give back `holder`'s permit of `kind`; the id of the oldest waiter whose record
        is still `queued`, taken off the waiters, for the caller to publish at once, or
        None (no such waiter, or the permit was not held: released already, or lapsed).
        Waiters passed over (stopped, gone) are forgotten."""

    @abstractmethod
    async def renew_starts(self, holders: Mapping[str, Sequence[str]], until: datetime) -> None:
        """Renew the permits still held, `{kind: [holder, ...]}`, until `until` (one
        released meanwhile stays released)."""

    # -- small documents (schedules and what plugins keep) ----------------------------

    @abstractmethod
    async def get_doc(self, space: str, name: str) -> Doc | None:
        """The document `name` of `space`, or None."""

    @abstractmethod
    async def put_doc(
        self, space: str, name: str, data: bytes, *, expected: int | None = None
    ) -> int | None:
        """Write a document, atomically: the new version, or None when `expected` failed.

        `expected=None` writes whatever is there; `0` only when there is no document;
        any other number only when the stored version is that number.
        """

    @abstractmethod
    async def list_docs(self, space: str) -> dict[str, Doc]:
        """Every document of `space`, by name in sorted order."""

    @abstractmethod
    async def delete_doc(self, space: str, name: str) -> bool:
        """Delete a document; True when there was one."""

    # -- counts for the overview (API.md section 16, GET /api/stats) ---------------------

    @abstractmethod
    async def count_states(self, kinds: Iterable[str]) -> dict[str, dict[JobState, int]]:
        """How many retained jobs of each kind of `kinds` are in each state, over the
        whole store: every kind with every state (0 when none).

        The counts are kept as records change (no scan of the records): a record
        purged after its retention leaves them by the time it answers 404.
        """

    @abstractmethod
    async def add_minute_counts(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """Add `counts` (`{(minute, name): n}`, `minute` the start of a UTC minute) to
        the per-minute counters every node shares; they are kept at least two hours."""

    @abstractmethod
    async def minute_counts(self, first: datetime, minutes: int) -> list[dict[str, int]]:
        """The counters of `minutes` minutes from `first` (the start of a UTC minute),
        oldest first; `{}` for a minute that counted nothing (or was forgotten)."""


class Delivery(ABC):
    """One delivery of a job id to this worker; settle it exactly once."""

    job_id: str
    routing: str
    redelivered: bool
    # What the publisher's store knew of the job (`StateStore.hint`), or b"".
    hint: bytes = b""

    @abstractmethod
    async def ack(self) -> None:
        """Done with the message: the job's state is stored."""

    @abstractmethod
    async def requeue(self) -> None:
        """Give the message back to the queue to be delivered again."""

    @abstractmethod
    async def reject(self) -> None:
        """Drop the message to the dead-letter destination (where there is one)."""


@runtime_checkable
class StopsTaking(Protocol):
    """A consumer (what `Queue.consume` yields) that can stop taking deliveries while
    those in hand are settled: a draining node's messages not yet started go to other
    nodes at once. A consumer without it simply stops when its block ends."""

    async def stop_taking(self) -> None:
        """Take no more deliveries; give back the ones received but not yet yielded."""


class Queue(_Closable, ABC):
    """Delivery of job ids to workers, per routing, at least once."""

    name: str

    async def start(self) -> None:
        """Connect; called once before use."""

    @abstractmethod
    async def ping(self) -> None:
        """Return when the broker answers; raise `BackendUnavailable` when it does not."""

    @abstractmethod
    async def publish(
        self, job_id: str, routing: str, *, delay: float = 0.0, hint: bytes = b""
    ) -> None:
        """Queue `job_id` on `routing`, delivered no earlier than `delay` seconds from now;
        returns once the broker holds it durably (a delayed message too). A delayed
        message waits in the broker, not in a worker. A queue that carries more than
        the id hands `hint` (`StateStore.hint`) to the delivery; others drop it."""

    @abstractmethod
    def consume(
        self, routings: Sequence[str], prefetch: int
    ) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        """Deliveries from the queues of `routings`, at most `prefetch` unsettled at once.

        Unsettled deliveries go back to the queue when the consumer (or its
        process) goes away, flagged `redelivered`.
        """

    @abstractmethod
    async def take(self, routings: Sequence[str], count: int, wait: float) -> list[Delivery]:
        """Up to `count` deliveries waiting on `routings` (in that order), without a
        consumer: for a caller that hands jobs to someone else (an external processor).
        Waits up to `wait` seconds for the first one; `[]` when none came. The caller
        settles each; an unsettled one goes back to the queue when this process or its
        connection goes away."""

    @abstractmethod
    async def depth(self, routing: str) -> int:
        """Messages ready and waiting (not delivered) on `routing`; delayed ones not yet due
        are not counted."""
