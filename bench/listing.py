"""List calls with many jobs held: what `GET /api/jobs` costs the memory store at
1,000,000 finished jobs, and the Redis store at 100,000 (a filter matching nothing
included), measured on the store itself (no HTTP: the figure is the store's).

    python bench/listing.py                      # memory, 1,000,000 jobs
    python bench/listing.py --jobs 200000
    python bench/listing.py --state redis --jobs 100000

Prints, per query, the median and the worst of `--repeat` calls in milliseconds, and
for memory the resident set size (RSS) of this process with the jobs held.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import anyio
import msgspec

from asyncproc.interfaces import JobQuery, StateStore
from asyncproc.lifecycle import Start, Succeed
from asyncproc.model import Job, JobState, utcnow

# Run as a script: `tests.contract` (the clean-up) importable from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = [f"bench.kind{n}" for n in range(10)]


def record(n: int, base_ms: int) -> Job:
    """A finished job record, one of ten kinds, created a millisecond after the last."""
    created = utcnow() - timedelta(milliseconds=base_ms - n)
    job = Job(
        id=f"{n:012d}{uuid.uuid4().hex[:20]}",
        kind=KINDS[n % len(KINDS)],
        state=JobState.QUEUED,
        created_at=created,
        deadline=created + timedelta(hours=1),
        retention=86400.0,
        content=msgspec.Raw(b'{"n":1}'),
    )
    return job


async def fill(store: StateStore, jobs: int) -> None:
    """`jobs` finished jobs in `store`, created in order."""
    if store.name == "memory":  # nothing to overlap: one after the other is quickest
        for n in range(jobs):
            await finish(store, record(n, jobs))
        return
    step = 2_000
    for first in range(0, jobs, step):
        async with anyio.create_task_group() as tasks:
            for n in range(first, min(jobs, first + step)):
                tasks.start_soon(finish, store, record(n, jobs))


async def finish(store: StateStore, job: Job) -> None:
    await store.create(job)
    await store.transition(job.id, Start())
    await store.transition(job.id, Succeed())


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def measure(store: StateStore, repeat: int) -> None:
    queries = {
        "newest 50": JobQuery(limit=50),
        "state=succeeded limit 50": JobQuery(state=JobState.SUCCEEDED, limit=50),
        f"kind={KINDS[3]} limit 50": JobQuery(kind=KINDS[3], limit=50),
        "state=running (none)": JobQuery(state=JobState.RUNNING, limit=50),
        "kind=nothing (none)": JobQuery(kind="bench.nothing", limit=50),
        f"kind={KINDS[3]} state=failed (none)": JobQuery(kind=KINDS[3], state=JobState.FAILED),
    }
    for name, query in queries.items():
        times = []
        page = None
        for _ in range(repeat):
            started = time.perf_counter()
            page = await store.list_jobs(query)
            times.append((time.perf_counter() - started) * 1000)
        # The second page too: a cursor deep in the list costs no more.
        assert page is not None
        if page.next is not None:
            started = time.perf_counter()
            await store.list_jobs(msgspec.structs.replace(query, cursor=page.next))
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"{name:40s} median {statistics.median(times):7.2f} ms   worst {max(times):7.2f} ms"
            f"   ({len(page.items)} items)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", choices=["memory", "redis"], default="memory")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    jobs = args.jobs or (1_000_000 if args.state == "memory" else 100_000)
    if args.state == "memory":
        from asyncproc.backends.memory import MemoryStateStore

        store: StateStore = MemoryStateStore(max_finished=0)
    else:
        from asyncproc.backends.redis import RedisStateStore

        prefix = f"asyncproc-bench-{uuid.uuid4().hex[:8]}:"
        store = RedisStateStore(args.redis_url, prefix=prefix)
    await store.start()
    try:
        started = time.perf_counter()
        await fill(store, jobs)
        print(
            f"{args.state}: {jobs:,} finished jobs stored in {time.perf_counter() - started:.1f} s"
        )
        if args.state == "memory":
            print(f"RSS with them held: {rss_mb():,.0f} MB")
        await measure(store, args.repeat)
    finally:
        if args.state == "redis":
            from tests.contract import delete_prefix

            await delete_prefix(args.redis_url, prefix)
        await store.aclose()


if __name__ == "__main__":
    anyio.run(main)
