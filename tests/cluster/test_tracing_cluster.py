"""Traces across nodes: an `api` node and a `worker` node as real processes (Redis +
RabbitMQ), both exporting to the test's OTLP/HTTP receiver. The job's attempt span is
exported by the worker node, in the trace of the enqueue request the api node served:
its parent travels with the job's record."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.otlp import ReceivedSpan, otlp_receiver
from tests.support import ROOT, NodeProcess, job_finished

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_the_worker_nodes_job_span_is_in_the_enqueue_requests_trace(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with otlp_receiver() as receiver:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "ASYNCPROC_STATE": "redis",
            "ASYNCPROC_QUEUE": "rabbitmq",
            "ASYNCPROC_REDIS_URL": redis_url,
            "ASYNCPROC_AMQP_URL": amqp_url,
            "ASYNCPROC_KEY_PREFIX": unique_prefix,
            "ASYNCPROC_SHUTDOWN_GRACE": "2",
            "ASYNCPROC_OTEL_ENDPOINT": receiver.url,
        }
        api = NodeProcess({**env, "ASYNCPROC_ROLE": "api"}, tmp_path, "api")
        worker: NodeProcess | None = None
        try:
            api.wait_healthy()  # the first node declares the queues
            worker = NodeProcess({**env, "ASYNCPROC_ROLE": "worker"}, tmp_path, "worker")
            worker.wait_healthy()
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                plain = await client.post(
                    "/api/demo.count/enqueue", json={"content": {"n": 1, "delay": 0}}
                )
                assert plain.status_code == 202, plain.text
                traced = await client.post(
                    "/api/demo.count/enqueue",
                    json={"content": {"n": 1, "delay": 0}},
                    headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
                )
                assert traced.status_code == 202, traced.text
                for response in (plain, traced):
                    status = await job_finished(client, response.json()["id"], timeout=30)
                    assert status["state"] == "succeeded"
            # SIGTERM: each node flushes its spans as it stops (awaited in a thread, so
            # that the receiver on this event loop keeps answering meanwhile).
            for node in (api, worker):
                node.process.send_signal(signal.SIGTERM)
            for node in (api, worker):
                await node.exited(30)  # uvicorn re-raises the SIGTERM it handled: status -15
        finally:
            for node in (api, worker):
                if node is not None:
                    node.stop()
            await forget_cluster(redis_url, amqp_url, unique_prefix)

    enqueues = {s.trace_id: s for s in receiver.named("POST /api/{kind}/enqueue")}
    assert len(enqueues) == 2
    assert {s.resource["asyncproc.role"] for s in enqueues.values()} == {"api"}
    for response in (plain, traced):
        job_id = response.json()["id"]
        attempt = only(receiver.of_job(job_id))
        assert attempt.resource["asyncproc.role"] == "worker"
        assert attempt.attributes["asyncproc.kind"] == "demo.count"
        assert attempt.attributes["asyncproc.attempt"] == 1
        assert attempt.status == "STATUS_CODE_OK"
        server = enqueues[attempt.trace_id]
        assert attempt.parent_span_id == server.span_id
    client_trace = only(receiver.of_job(traced.json()["id"])).trace_id
    assert client_trace == CLIENT_TRACE
    assert enqueues[CLIENT_TRACE].parent_span_id == CLIENT_SPAN
