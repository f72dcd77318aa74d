"""`GET /metrics` (API.md section 16): this node's metrics, scraped over HTTP and parsed
as Prometheus parses them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.cluster import forget_cluster
from tests.support import api_client, demo_app, job_finished, post_json, wait_until

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    """Every sample of `/metrics`: (name, sorted labels) -> value."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def enqueue(client: httpx.AsyncClient, kind: str, content: Any, **extra: Any) -> str:
    job = await post_json(client, f"/api/{kind}/enqueue", {"content": content, **extra}, 202)
    return str(job["id"])


async def test_metrics_count_jobs_by_kind_and_state() -> None:
    async with api_client(demo_app()) as client:
        for _ in range(2):
            await job_finished(client, await enqueue(client, "demo.count", {"n": 0}))
        await job_finished(
            client, await enqueue(client, "demo.fail", {"mode": "unhandled", "message": "x"})
        )
        later = await enqueue(client, "demo.count", {"n": 0}, delay=60)
        await post_json(client, f"/api/jobs/{later}/stop", None, 200)
        # Waiting in a queue no worker of this node consumes.
        for _ in range(3):
            await enqueue(client, "demo.count", {"n": 0}, procRouting="elsewhere")
        samples = await scrape(client)

    def count(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    assert count("asyncproc_jobs_enqueued_total", kind="demo.count") == 6
    assert count("asyncproc_jobs_enqueued_total", kind="demo.fail") == 1
    assert count("asyncproc_jobs_enqueued_total", kind="demo.report") == 0
    assert count("asyncproc_jobs_finished_total", kind="demo.count", state="succeeded") == 2
    assert count("asyncproc_jobs_finished_total", kind="demo.count", state="stopped") == 1
    assert count("asyncproc_jobs_finished_total", kind="demo.count", state="failed") == 0
    assert count("asyncproc_jobs_finished_total", kind="demo.fail", state="failed") == 1
    # Only jobs that ran have a duration and a wait.
    assert count("asyncproc_job_duration_seconds_count", kind="demo.count") == 2
    assert count("asyncproc_job_duration_seconds_bucket", kind="demo.count", le="+Inf") == 2
    assert count("asyncproc_job_duration_seconds_bucket", kind="demo.count", le="1.0") == 2
    assert count("asyncproc_job_duration_seconds_count", kind="demo.fail") == 1
    assert 0 <= count("asyncproc_job_duration_seconds_sum", kind="demo.count") < 2
    assert count("asyncproc_queue_wait_seconds_count", kind="demo.count") == 2
    assert count("asyncproc_queue_depth", routing="elsewhere") == 3
    assert count("asyncproc_queue_depth", routing="default") == 0
    assert count("asyncproc_jobs_running", kind="demo.count") == 0


async def test_running_jobs_show_while_they_run() -> None:
    async with api_client(demo_app()) as client:
        job_id = await enqueue(client, "demo.count", {"n": 100, "delay": 0.1})

        async def running() -> float:
            return value(await scrape(client), "asyncproc_jobs_running", kind="demo.count")

        await wait_until(running, lambda n: n == 1)
        await post_json(client, f"/api/jobs/{job_id}/stop", None, 202)
        await job_finished(client, job_id)
        await wait_until(running, lambda n: n == 0)


async def test_schedule_runs_and_trigger_items_are_counted() -> None:
    trigger = {
        "name": "count-it",
        "kind": "demo.count",
        "event": "count",
        "id_field": "id",
        "content_field": "content",
    }
    settings = load_settings(environ={}, triggers=[trigger], shutdown_grace=0.2)
    async with api_client(create_app(settings)) as client:
        for event_id in ("a", "a", "b"):
            await post_json(client, "/api/events/count", {"id": event_id, "content": {"n": 0}}, 200)
        await post_json(
            client, "/api/events/count", {"id": "c", "content": {"n": -1}}, 200
        )  # refused
        schedule = {"kind": "demo.count", "content": {"n": 0}, "cron": "0 0 1 1 *"}
        response = await client.put("/api/schedules/yearly", json=schedule)
        assert response.status_code == 201, response.text
        await post_json(client, "/api/schedules/yearly/trigger", None, 202)
        samples = await scrape(client)
    items = "asyncproc_trigger_items_total"
    assert value(samples, items, trigger="count-it", outcome="created") == 2
    assert value(samples, items, trigger="count-it", outcome="existing") == 1
    assert value(samples, items, trigger="count-it", outcome="refused") == 1
    runs = "asyncproc_schedule_runs_total"
    assert value(samples, runs, schedule="yearly", outcome="created") == 1


async def test_each_app_counts_its_own_jobs() -> None:
    async with api_client(demo_app()) as first, api_client(demo_app()) as second:
        await job_finished(first, await enqueue(first, "demo.count", {"n": 0}))
        ours = await scrape(first)
        theirs = await scrape(second)
    assert value(ours, "asyncproc_jobs_enqueued_total", kind="demo.count") == 1
    assert value(theirs, "asyncproc_jobs_enqueued_total", kind="demo.count") == 0


async def test_metrics_off_answers_404() -> None:
    async with api_client(demo_app(metrics=False)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_worker_node_serves_metrics(
    redis_url: str, amqp_url: str, unique_prefix: str
) -> None:
    settings = load_settings(
        environ={},
        role="worker",
        state="redis",
        queue="rabbitmq",
        redis_url=redis_url,
        amqp_url=amqp_url,
        key_prefix=unique_prefix,
        shutdown_grace=0.2,
    )
    try:
        async with api_client(create_app(settings)) as client:
            samples = await scrape(client)
            assert (await client.get("/api/stats")).status_code == 404  # HTTP API: not here
    finally:
        await forget_cluster(redis_url, amqp_url, unique_prefix)
    assert value(samples, "asyncproc_jobs_running", kind="demo.count") == 0
    assert ("asyncproc_queue_depth", (("routing", "default"),)) in samples


async def test_openapi_documents_metrics_and_stats() -> None:
    async with api_client(demo_app()) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    stats = document["paths"]["/api/stats"]["get"]["responses"]["200"]
    assert stats["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Stats"}
    assert {"kinds", "perMinute"} <= document["components"]["schemas"]["Stats"]["properties"].keys()
