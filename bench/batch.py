"""Batch ingest: `JobService.enqueue_many` of N-item batches, nobody consuming.

Prints jobs/s accepted (stored and, with RabbitMQ, confirmed by the broker) and the
time of one batch, p50 and p99, and the CPU per job of this process, redis-server and
RabbitMQ (from /proc). No worker runs, so this is the cost of getting
jobs in, the path of `POST /api/{kind}/enqueue-batch` minus HTTP.

    python bench/batch.py                                  # memory backends
    python bench/batch.py --state redis --queue rabbitmq   # the cluster backends
    python bench/batch.py --state redis --queue rabbitmq --size 100 --clients 8
    python bench/batch.py --state redis --queue rabbitmq --size 100 --http  # an api node

With `--http`, an `api` node (`python app.py`, no worker) takes the batches from wrk
(`--clients` connections) on `POST /api/{kind}/enqueue-batch`, and the CPU per job of
that node, redis-server and RabbitMQ is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

import anyio
import msgspec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asyncproc.config import load_settings
from asyncproc.model import Trigger, TriggerType
from asyncproc.registry import Registry
from asyncproc.server import open_queue, open_store
from asyncproc.service import EnqueueRequest, JobService
from bench import noop_plugin
from bench.inprocess import Backends, clean
from bench.overhttp import Load, _cpu_seconds, asyncproc_server, run_wrk, service_pids

BATCH = Trigger(TriggerType.BATCH)


async def main(args: argparse.Namespace) -> None:
    """Run `args.batches` batches of `args.size` items and print the figures."""
    prefix = f"asyncproc-bench-{uuid.uuid4().hex[:10]}:"
    settings = load_settings(
        environ={}, state=args.state, queue=args.queue, key_prefix=prefix, plugins=[]
    )
    registry = Registry()
    registry.include(noop_plugin.registry)
    kind = next(iter(registry)).name
    store, queue = open_store(settings), open_queue(settings)
    await store.start()
    await queue.start()
    service = JobService(
        registry=registry,
        store=store,
        queue=queue,
        processing_timeout=settings.processing_timeout,
        retention=settings.retention,
    )
    times: list[float] = []

    async def client(batches: int) -> None:
        """One sender: its batches one after the other, as one HTTP client would."""
        for _ in range(batches):
            requests = [
                EnqueueRequest(content=msgspec.Raw(b"{}"), key=f"k{i}") for i in range(args.size)
            ]
            start = time.perf_counter()
            outcomes = await service.enqueue_many(kind, requests, trigger=BATCH)
            times.append(time.perf_counter() - start)
            if args.verbose:
                print(f"batch {len(times)}: {times[-1] * 1000:.1f} ms")
            assert all(item.outcome == "created" for item in outcomes), outcomes[:3]

    processes = {"node": os.getpid(), **service_pids(Backends(args.state, args.queue))}
    before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
    try:
        began = time.perf_counter()
        async with anyio.create_task_group() as clients:
            for n in range(args.clients):
                clients.start_soon(client, len(range(n, args.batches, args.clients)))
        elapsed = time.perf_counter() - began
        spent = {name: _cpu_seconds(pid) - before[name] for name, pid in processes.items()}
    finally:
        await queue.aclose()
        await store.aclose()
        await clean(settings)
    jobs = args.batches * args.size
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"batch ingest {args.state}/{args.queue}: {jobs / elapsed:,.0f} jobs/s accepted "
        f"({args.batches} batches of {args.size}, {args.clients} at once); one batch p50 "
        f"{statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; cpu/job "
        + ", ".join(f"{name} {cpu / jobs * 1e6:.0f} us" for name, cpu in spent.items())
    )


def over_http(args: argparse.Namespace) -> None:
    """`--http`: wrk POSTs `args.batches` batches to an `api` node; jobs/s accepted."""
    backends = Backends(args.state, args.queue, split=args.state != "memory")
    items = ",".join(f'{{"content":{{}},"key":"k{i}"}}' for i in range(args.size))
    body = f'{{"items":[{items}]}}'.encode()
    path = f"/api/{noop_plugin.KIND}/enqueue-batch"
    with asyncproc_server(backends, worker=False) as server:
        processes = {"api": server.process.pid, **service_pids(backends)}
        before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
        wrk = run_wrk(server.base_url + path, args.batches, Load(1, args.clients, 120), body)
        spent = {name: _cpu_seconds(pid) - before[name] for name, pid in processes.items()}
    jobs = wrk.requests * args.size
    print(
        f"batch ingest over HTTP {args.state}/{args.queue}: {jobs / wrk.seconds:,.0f} jobs/s "
        f"accepted ({wrk.requests:,} batches of {args.size}, {args.clients} connections, "
        f"non-2xx/errors {wrk.bad}); cpu/job "
        + ", ".join(f"{name} {cpu / jobs * 1e6:.0f} us" for name, cpu in spent.items())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", choices=["memory", "redis"], default="memory")
    parser.add_argument("--queue", choices=["memory", "rabbitmq"], default="memory")
    parser.add_argument("--size", type=int, default=1000, help="items per batch (<= 1000)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clients", type=int, default=1, help="senders of batches at once")
    parser.add_argument("--verbose", action="store_true", help="print each batch's time")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop (an api node runs on uvloop when installed, as uvicorn picks it)",
    )
    parser.add_argument("--http", action="store_true", help="through an api node, by wrk")
    args = parser.parse_args()
    if args.http:
        over_http(args)
    else:
        anyio.run(
            main, args, backend="asyncio", backend_options={"use_uvloop": args.loop == "uvloop"}
        )
