"""Built-in plugin: `GET /metrics`, this node's metrics in the Prometheus text format
(API.md section 16), on when `metrics = true` (the default).

What a job costs on its path: an after-change hook that adds to plain counters and
histogram buckets kept per kind (`JobMetrics`), no lock, no label lookup. Everything
else is read when Prometheus scrapes: the running jobs from the worker, the queue
depths from the queue, the schedule and trigger outcomes from the counts their
plugins keep. Each app has its own `CollectorRegistry`, never the global default
one, so several nodes in one process (tests, embedding) do not clash.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.apidoc import Answer, ErrorBody, Operation
from asyncproc.errors import BackendUnavailable, NotFound
from asyncproc.hooks import Node
from asyncproc.model import Job, JobState
from asyncproc.registry import Registry

__all__ = ["BUCKETS", "JobMetrics", "NodeMetrics"]

registry = Registry()
log = logging.getLogger("asyncproc.metrics")

# Seconds; jobs run from milliseconds to hours, so the buckets go up to one hour.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_LE = [*(floatToGoString(b) for b in BUCKETS), "+Inf"]
# What `generate_latest` writes: the classic text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Most routings a node reports the depth of (the names its enqueues used, and its own).
MAX_ROUTINGS = 100


class Histogram:
    """Bucket counts and a sum: what an observation costs is a search and two additions."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of `value` seconds."""
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus exposes them: `le` and the count up to it."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, n in zip(_LE, self.counts, strict=True):
            running += n
            out.append((le, running))
        return out


class KindMetrics:
    """The counters of one kind (the labelled children, made once per kind)."""

    __slots__ = ("duration", "enqueued", "finished", "wait")

    def __init__(self) -> None:
        self.enqueued = 0
        self.finished = dict.fromkeys((JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED), 0)
        self.duration = Histogram()
        self.wait = Histogram()


class JobMetrics:
    """The after-change hook counting this node's enqueues, starts and ends per kind."""

    # Every state: creations (queued), starts (running) and ends; `Hooks.watches`.
    states = frozenset(JobState)

    def __init__(self) -> None:
        self.kinds: dict[str, KindMetrics] = {}
        self.routings: set[str] = set()

    def of(self, kind: str) -> KindMetrics:
        """The counters of `kind`."""
        metrics = self.kinds.get(kind)
        if metrics is None:
            metrics = self.kinds[kind] = KindMetrics()
        return metrics

    async def __call__(self, before: Job | None, after: Job) -> None:
        """Count a created job, a start (its wait in the queue) or an end (its run)."""
        if before is None:
            self.of(after.kind).enqueued += 1
            if after.proc_routing not in self.routings and len(self.routings) < MAX_ROUTINGS:
                self.routings.add(after.proc_routing)
            return
        state = after.state
        if state is before.state:
            return  # progress, a stop request, a step: no start, no end
        if state is JobState.RUNNING:
            if after.started_at is not None:
                since = before.not_before or before.created_at
                wait = (after.started_at - since).total_seconds()
                self.of(after.kind).wait.observe(wait if wait > 0 else 0.0)
        elif state.terminal:
            metrics = self.of(after.kind)
            metrics.finished[state] += 1
            if after.started_at is not None and after.finished_at is not None:
                metrics.duration.observe((after.finished_at - after.started_at).total_seconds())


class NodeMetrics(Collector):
    """This node's metric families, collected at scrape time."""

    def __init__(self, node: Node, jobs: JobMetrics) -> None:
        self.node = node
        self.jobs = jobs
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.depths: dict[str, int] = {}

    async def refresh(self) -> None:
        """Read what the scrape reports that only an await can read (queue depths)."""
        queue = self.node.service.queue
        routings = set(self.node.settings.routings) | self.jobs.routings | {"default"}
        depths: dict[str, int] = {}
        for routing in sorted(routings):
            try:
                with anyio.fail_after(2):
                    depths[routing] = await queue.depth(routing)
            except (BackendUnavailable, TimeoutError, OSError):
                continue  # not reported this time rather than a wrong zero
        self.depths = depths

    def collect(self) -> Iterator[Metric]:
        """The families of API.md section 16."""
        kinds = [kind.name for kind in self.node.service.registry]
        jobs = self.jobs
        for kind in kinds:
            jobs.of(kind)  # every kind shows, with zeros
        enqueued = CounterMetricFamily(
            "asyncproc_jobs_enqueued", "Jobs created by this node", labels=["kind"]
        )
        finished = CounterMetricFamily(
            "asyncproc_jobs_finished",
            "Jobs this node saw end, by final state",
            labels=["kind", "state"],
        )
        duration = HistogramMetricFamily(
            "asyncproc_job_duration_seconds",
            "Run time of the jobs this node saw end (startedAt to finishedAt)",
            labels=["kind"],
        )
        wait = HistogramMetricFamily(
            "asyncproc_queue_wait_seconds",
            "Time the jobs this node started waited (createdAt, or notBefore, to startedAt)",
            labels=["kind"],
        )
        for kind, metrics in sorted(jobs.kinds.items()):
            enqueued.add_metric([kind], metrics.enqueued)
            for state, n in metrics.finished.items():
                finished.add_metric([kind, str(state)], n)
            duration.add_metric([kind], metrics.duration.cumulative(), metrics.duration.total)
            wait.add_metric([kind], metrics.wait.cumulative(), metrics.wait.total)
        yield from (enqueued, finished, duration, wait)
        yield self._running(kinds)
        depth = GaugeMetricFamily(
            "asyncproc_queue_depth", "Jobs waiting in the queue, by routing", labels=["routing"]
        )
        for routing, n in sorted(self.depths.items()):
            depth.add_metric([routing], n)
        yield depth
        yield from self._schedules_and_triggers()

    def _running(self, kinds: list[str]) -> Metric:
        running = GaugeMetricFamily(
            "asyncproc_jobs_running", "Jobs running on this node now", labels=["kind"]
        )
        counts = dict.fromkeys(kinds, 0)
        worker: Any = getattr(self.node.app.state, "worker", None)
        for run in list(getattr(worker, "running", {}).values()):
            counts[run.ctx.kind] = counts.get(run.ctx.kind, 0) + 1
        for kind, n in sorted(counts.items()):
            running.add_metric([kind], n)
        return running

    def _schedules_and_triggers(self) -> Iterator[Metric]:
        state = self.node.app.state
        runs = CounterMetricFamily(
            "asyncproc_schedule_runs",
            "Schedule runs this node started, by outcome (created, skipped, refused)",
            labels=["schedule", "outcome"],
        )
        schedule_runs: dict[tuple[str, str], int] = getattr(state, "schedule_runs", {})
        for (schedule, outcome), n in sorted(schedule_runs.items()):
            runs.add_metric([schedule, outcome], n)
        yield runs
        items = CounterMetricFamily(
            "asyncproc_trigger_items",
            "Events and messages this node's triggers turned into jobs, by outcome",
            labels=["trigger", "outcome"],
        )
        triggers: Any = getattr(state, "triggers", None)
        for name, counts in sorted(getattr(triggers, "counts", {}).items()):
            for outcome in ("created", "existing", "refused"):
                items.add_metric([name, outcome], getattr(counts, outcome))
        yield items


async def metrics(request: Request) -> Response:
    """GET /metrics: this node's metrics in the Prometheus text format."""
    collector: NodeMetrics | None = getattr(request.app.state, "metrics", None)
    if collector is None:
        raise NotFound("metrics are off on this node (metrics = false)")
    await collector.refresh()
    return Response(generate_latest(collector.registry), media_type=CONTENT_TYPE)


registry.route("/metrics", methods=["GET"], every_role=True)(metrics)
registry.document(
    Operation(
        "GET",
        "/metrics",
        "This node's metrics (Prometheus text format)",
        "operations",
        {
            200: Answer(
                "The metric families of API.md section 16",
                media="text/plain",
                schema={"type": "string"},
            ),
            404: Answer("Metrics are off (`metrics = false`)", ErrorBody),
        },
    )
)


@registry.lifespan
@asynccontextmanager
async def metrics_running(node: Node) -> AsyncIterator[None]:
    """Count this node's jobs while it runs, when `metrics` is on."""
    if not node.settings.metrics:
        yield
        return
    jobs = JobMetrics()
    hooks = node.service.hooks
    hooks.after_change.append(jobs)
    node.app.state.metrics = NodeMetrics(node, jobs)
    try:
        yield
    finally:
        hooks.after_change.remove(jobs)
        del node.app.state.metrics
