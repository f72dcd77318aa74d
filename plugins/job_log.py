"""Built-in plugin: one log line per finished job (API.md section 16).

Logged by the node that stored the end (logger `asyncproc.jobs`, INFO; WARNING for a
failure), with the fields as extras for the JSON format: `jobId`, `kind`, `state`,
`attempt`, `duration` (seconds from its start, null when it never started) and
`errorId`.
"""

from __future__ import annotations

import logging
import sys

from asyncproc.model import TERMINAL_STATES, Job, JobState
from asyncproc.registry import Registry

__all__ = ["log_finished"]

registry = Registry()
log = logging.getLogger("asyncproc.jobs")
_FILE = __file__


async def log_finished(before: Job | None, after: Job) -> None:
    """Log `after` when this change finished it."""
    if before is None or before.state is after.state:
        return
    level = logging.WARNING if after.state is JobState.FAILED else logging.INFO
    if not log.isEnabledFor(level):
        return
    duration = None
    if after.started_at is not None and after.finished_at is not None:
        duration = round((after.finished_at - after.started_at).total_seconds(), 6)
    error_id = after.error.error_id if after.error is not None else None
    # The record made as `log.log` would make it, less its costs that buy nothing
    # here: the walk up the stack for the caller (known: this line) and the check of
    # each extra against the record's attributes (none of these names is one).
    record = log.makeRecord(
        log.name,
        level,
        _FILE,
        sys._getframe().f_lineno,
        "job %s (%s) %s: attempt %d, %s%s",
        (
            after.id,
            after.kind,
            after.state,
            after.attempt,
            "not started" if duration is None else f"{duration:.3f} s",
            "" if error_id is None else f", errorId {error_id}",
        ),
        None,
        "log_finished",
    )
    record.__dict__.update(
        jobId=after.id,
        kind=after.kind,
        state=str(after.state),
        attempt=after.attempt,
        duration=duration,
        errorId=error_id,
    )
    log.handle(record)


log_finished.states = TERMINAL_STATES  # type: ignore[attr-defined]
registry.after_change(log_finished)
