"""Contract suites: one per backend interface, parametrised over every implementation.

The helpers here build records and clean up after the Redis-backed tests.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import msgspec
import redis.asyncio as aioredis

from asyncproc.changes import Change, ChangeHub
from asyncproc.model import Job, JobState, utcnow

__all__ = ["RecordingHub", "delete_prefix", "new_job"]


def new_job(
    job_id: str | None = None,
    *,
    kind: str = "demo.count",
    key: str | None = None,
    created_at: datetime | None = None,
    deadline_in: float = 3600.0,
    retention: float = 3600.0,
    content: bytes = b'{"n":1}',
) -> Job:
    """A queued record as `JobService.enqueue` would build it."""
    created = created_at or utcnow()
    return Job(
        id=job_id or uuid.uuid4().hex,
        kind=kind,
        state=JobState.QUEUED,
        created_at=created,
        deadline=created + timedelta(seconds=deadline_in),
        retention=retention,
        key=key,
        content=msgspec.Raw(content),
        headers={"x-test": "yes"},
        incoming_at=created,
    )


class RecordingHub(ChangeHub):
    """A ChangeHub that also keeps every change it was handed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[Change] = []

    def publish(self, change: Change) -> None:
        """Record `change`, then deliver it as usual."""
        self.changes.append(change)
        super().publish(change)

    def versions(self, job_id: str) -> list[int]:
        """The versions of `job_id` seen so far."""
        return [change.version for change in self.changes if change.job_id == job_id]


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every Redis key under `prefix` (a test's own namespace)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()
