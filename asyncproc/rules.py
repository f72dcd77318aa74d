"""The rules beside the state machine: pure functions every store and the worker call.

A store makes a rule atomic (the memory store under the event loop, the Redis
store by handing the rule's *decision* to its Lua script); none writes a rule of
its own. The hypothesis state machine checks them against every store.
"""

from __future__ import annotations

import enum
from datetime import datetime

from .lifecycle import Event, RequestStop
from .model import Job, JobState, Uniqueness

__all__ = [
    "KeyAfter",
    "expired",
    "holds_key",
    "inherited_wait",
    "key_after",
    "must_tell",
    "replace_event",
    "retries_left",
    "retry_backoff",
    "waits_for",
]


def expired(job: Job, now: datetime) -> bool:
    """True when a terminal `job` is past its retention: it reads as gone."""
    return job.finished_at is not None and job.expires_at <= now


def holds_key(rule: Uniqueness, state: JobState) -> bool:
    """True when a job in `state` holds its key under `rule` (API.md section 6)."""
    if rule is Uniqueness.NONE:
        return False
    if state in (JobState.QUEUED, JobState.RUNNING):
        return True
    return rule is Uniqueness.ONCE and state is JobState.SUCCEEDED


class KeyAfter(enum.StrEnum):
    """What becomes of a key when its holder finishes (the Redis script gets the value)."""

    KEEP = "keep"  # still unfinished: it holds the key as before
    DONE = "done"  # a succeeded `once` job: holds it until released
    FREE = "free"  # anyone may take the key
    WAIT = "wait"  # anyone may take it, but must wait for the job the holder waited for


def key_after(rule: Uniqueness, job: Job) -> KeyAfter:
    """Whether the key's holder `job` still holds it after its latest change.

    A holder that ends without having run while it waited for a replaced job
    (`after`) leaves that wait on the key (`WAIT`): the key is free, but the next
    holder waits for that job too, or it could run beside the replaced job that is
    still stopping.
    """
    if not job.state.terminal:
        return KeyAfter.KEEP
    if holds_key(rule, job.state):
        return KeyAfter.DONE
    return KeyAfter.WAIT if inherited_wait(job) is not None else KeyAfter.FREE


def inherited_wait(previous: Job) -> str | None:
    """The job a new holder of a free key must wait for, given the key's last holder:
    what that holder waited for, when it ended without ever running."""
    if previous.state.terminal and previous.started_at is None:
        return previous.after
    return None


def replace_event(holder: Job) -> Event | None:
    """The change `onConflict: replace` makes to the key's holder (None: none, it is done)."""
    if holder.state in (JobState.QUEUED, JobState.RUNNING):
        return RequestStop()
    return None  # a succeeded `once` holder is simply released


def waits_for(stopped_holder: Job) -> str | None:
    """The job a new holder must not run beside, once the old holder was stopped for it:
    the old holder while it still runs; else what the old holder itself waited for (a
    queued holder that replaced a running job never ran, but that job may still run)."""
    return stopped_holder.id if not stopped_holder.state.terminal else stopped_holder.after


def retries_left(job: Job, retries: int) -> bool:
    """True when a retryable failure of `job`'s current attempt may run again."""
    return job.attempt <= retries


def retry_backoff(attempt: int, first: float, cap: float, jitter: float) -> float:
    """Seconds before attempt `attempt + 1` runs: `first` doubling per attempt, capped at
    `cap`, times `1 + jitter` where the caller draws `jitter` from [-0.25, 0.25]."""
    if first <= 0:
        return 0.0
    base = min(cap, first * 2.0 ** max(0, attempt - 1))
    return max(0.0, base * (1.0 + max(-0.25, min(0.25, jitter))))


def must_tell(before: Job, after: Job, by_runner: bool = False) -> bool:
    """Whether every node must hear of the change `before` -> `after`, watched or not: a
    stop request, or the job leaving `running` (finished, taken back), which the node
    running it must act on, unless that node wrote it (`by_runner`: the end of its
    own attempt). Other changes are told only to nodes that watch the job (a long
    poll, an event stream): nobody else acts on them."""
    if after.stop_requested and not before.stop_requested:
        return True
    return not by_runner and (
        after.state.terminal
        or (before.state is JobState.RUNNING and after.state is not JobState.RUNNING)
    )
