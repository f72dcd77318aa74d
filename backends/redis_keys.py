"""What the Redis store's `insert` does about a held key (API.md section 6).

The CREATE script answers what holds the key (the hold value "<rule>|<id>" or
"done|<id>", the holder's record and write token); `decide` applies the rules of
`asyncproc.rules` to it, with the same outcomes as the memory store, and the next
script call carries the decision out only if nothing it read has changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import msgspec

from asyncproc.errors import KeyConflict
from asyncproc.interfaces import Created
from asyncproc.lifecycle import apply
from asyncproc.model import Job, OnConflict, Uniqueness, decode_job
from asyncproc.rules import expired, holds_key, replace_event, waits_for

__all__ = ["Free", "Replace", "decide", "hold_of"]


class Free(NamedTuple):
    """Create `job`, provided the hold value is still `expected` ("": no hold)."""

    expected: str
    job: Job


class Replace(NamedTuple):
    """Create `job` as the key's holder and write the old holder as `stopped`,
    provided the hold value is still `expected` and the holder's token `token`."""

    expected: str
    job: Job
    holder: Job
    stopped: Job
    token: bytes


def hold_of(held: str) -> tuple[Uniqueness | None, str]:
    """The rule and the holder's id of a hold value ("<rule>|<id>", "done|<id>"); for
    "wait|<id>" (a free key whose next holder waits for job <id>) None and that id."""
    rule, _, holder_id = held.partition("|")
    if rule == "wait":
        return None, holder_id
    return (Uniqueness.ONCE if rule == "done" else Uniqueness(rule)), holder_id


def decide(
    job: Job,
    on_conflict: OnConflict,
    held: str | None,
    record: bytes | None,
    token: bytes | None,
    now: datetime,
) -> Created | Free | Replace:
    """What inserting `job` does when the script found `held` (None: the key is free)
    with the holder's `record` and `token` (None: no such record).

    A hold whose job no longer holds the key is free; a `once` hold outlives its
    purged job; then `on_conflict`: `existing` answers the holder, `reject` raises
    `KeyConflict`, `replace` stops the holder (`rules.replace_event`).
    """
    if held is None:
        return Free("", job)
    rule, holder_id = hold_of(held)
    if rule is None:  # free, but the last holder left a wait: inherit it
        return Free(held, msgspec.structs.replace(job, after=holder_id))
    holder = decode_job(record) if record is not None else None
    if holder is not None and (
        (holder.id, holder.kind, holder.key) != (holder_id, job.kind, job.key)
        or expired(holder, now)
    ):
        holder = None  # purged, or the id was used again since
    if holder is not None:
        if not holds_key(rule, holder.state):
            return Free(held, job)  # a stale hold: the key is free
    elif rule is not Uniqueness.ONCE:
        return Free(held, job)
    # Held, by `holder` or by a succeeded `once` job purged since.
    if on_conflict is OnConflict.EXISTING and holder is not None:
        return Created(holder, False)
    if on_conflict is not OnConflict.REPLACE:
        raise KeyConflict(f"key {job.key!r} is held by job {holder_id}", jobId=holder_id)
    event = replace_event(holder) if holder is not None else None
    if holder is None or event is None:
        return Free(held, job)  # a succeeded `once` holder: released
    stopped = apply(holder, event, now)
    after = waits_for(stopped)
    if after is not None:
        job = msgspec.structs.replace(job, after=after)
    return Replace(held, job, holder, stopped, token or b"")
