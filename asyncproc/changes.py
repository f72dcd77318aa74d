"""Change notifications inside one node.

Every StateStore publishes a `Change` here for a write, on every node (the memory
store directly, for every write; the Redis store from its pub/sub listener, for the
writes every node must hear and those of jobs some node watches, `rules.must_tell`).
Long poll and SSE wait on it; the worker hears stop requests for the jobs it runs
through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import msgspec

from .model import JobState

__all__ = ["Change", "ChangeHub"]


class Change(msgspec.Struct, frozen=True, array_like=True):
    """One write to a job record, as small as it can be to travel between nodes."""

    job_id: str
    version: int
    state: JobState
    stop_requested: bool


class ChangeHub:
    """Wakes the local waiters of a job when it changes, and calls its stop handler."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._stop_handlers: dict[str, Callable[[Change], None]] = {}
        # Called with a job id when a waiter starts listening to it: a store whose
        # notifications travel between nodes tells the others that this job is
        # watched here (`rules.must_tell`: other changes are told only then).
        self.on_watch: Callable[[str], None] | None = None

    def publish(self, change: Change) -> None:
        """Deliver `change` to this node's waiters and stop handler (event-loop thread)."""
        waiters = self._waiters.get(change.job_id)
        if waiters:
            for event in waiters:
                event.set()
        # A stop request, or the job left `running` elsewhere (finished, or taken back
        # by a lease sweep): either way the copy running here must end.
        if change.stop_requested or change.state is not JobState.RUNNING:
            handler = self._stop_handlers.get(change.job_id)
            if handler is not None:
                handler(change)

    @contextmanager
    def listen(self, job_id: str) -> Iterator[anyio.Event]:
        """An event set at the next change of `job_id`.

        Enter it *before* reading the record, so no change can slip in between (and,
        on a store shared by nodes, the read makes sure the others know it is watched).
        """
        if self.on_watch is not None:
            self.on_watch(job_id)
        event = anyio.Event()
        waiters = self._waiters.setdefault(job_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(job_id) is waiters:
                del self._waiters[job_id]

    @contextmanager
    def on_stop(self, job_id: str, handler: Callable[[Change], None]) -> Iterator[None]:
        """Call `handler(change)` when `job_id` gets a stop request or leaves `running`."""
        self._stop_handlers[job_id] = handler
        try:
            yield
        finally:
            if self._stop_handlers.get(job_id) is handler:
                del self._stop_handlers[job_id]

    def watched(self, job_id: str) -> bool:
        """True when this node has a waiter or a stop handler for `job_id`."""
        return job_id in self._waiters or job_id in self._stop_handlers

    def watched_ids(self) -> list[str]:
        """Every job id this node waits on or runs (a store re-reads them after an outage)."""
        return list(self._waiters.keys() | self._stop_handlers.keys())
