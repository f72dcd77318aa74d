"""The body of a job's message on RabbitMQ: its id, then what the publisher's store
knew of it.

    <job id>                   (a message with no hint, as every message was before)
    <job id> "\\n" <hint>       (`StateStore.hint`: the worker's first read of the job)

A job id never holds a newline (ids are printable), so the first one ends it.
"""

from __future__ import annotations

__all__ = ["job_message", "read_job_message"]

# A hint bigger than this is not sent: the record is read from the store instead,
# and the message stays small for the broker.
HINT_MAX = 16 * 1024


def job_message(job_id: str, hint: bytes = b"") -> bytes:
    """The body of `job_id`'s message, with `hint` when it is small enough."""
    if not hint or len(hint) > HINT_MAX:
        return job_id.encode()
    return b"%s\n%s" % (job_id.encode(), hint)


def read_job_message(body: bytes, errors: str = "strict") -> tuple[str, bytes]:
    """The job id and the hint of a message body; an id that is not UTF-8 raises
    `UnicodeDecodeError` (`errors="replace"`: decoded with replacement characters)."""
    head, _, hint = body.partition(b"\n")
    return head.decode(errors=errors), hint
