"""Traces with OpenTelemetry (API.md section 16): spans exported over OTLP/HTTP to a
receiver the test runs, on the memory backends (the cluster: tests/cluster)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from asyncproc.config import load_settings
from asyncproc.errors import ConfigError
from asyncproc.hooks import Attempt
from asyncproc.registry import Registry
from tests.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support import ROOT, api_client, demo_app, job_finished, post_json

pytestmark = pytest.mark.anyio

ENQUEUE = "POST /api/{kind}/enqueue"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@asynccontextmanager
async def traced_app(
    *registries: Any, endpoint: str | None = None
) -> AsyncIterator[tuple[Receiver, httpx.AsyncClient]]:
    """A receiver, and a client of a demo app exporting to it; the app has stopped (and
    flushed its spans) when this exits."""
    async with otlp_receiver() as receiver:
        app = demo_app(*registries, otel_endpoint=endpoint or receiver.url)
        async with api_client(app) as client:
            yield receiver, client


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_enqueue_span_is_the_parent_of_the_job_attempt_span() -> None:
    async with traced_app() as (receiver, client):
        job = await post_json(
            client, "/api/demo.count/enqueue", {"content": {"n": 1, "delay": 0}}, 202
        )
        assert (await job_finished(client, job["id"]))["state"] == "succeeded"
    server = only(receiver.named(ENQUEUE))
    assert server.kind == "SPAN_KIND_SERVER"
    assert server.parent_span_id == "", "no client context: the server span is the root"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/api/{kind}/enqueue"
    assert server.attributes["http.response.status_code"] == 202
    assert server.resource["service.name"] == "asyncproc"
    attempt = only(receiver.of_job(job["id"]))
    assert attempt.name == "job demo.count"
    assert attempt.trace_id == server.trace_id
    assert attempt.parent_span_id == server.span_id
    assert attempt.attributes["asyncproc.kind"] == "demo.count"
    assert attempt.attributes["asyncproc.attempt"] == 1
    assert attempt.attributes["asyncproc.outcome"] == "succeeded"
    assert attempt.status == "STATUS_CODE_OK"
    # The status reads are spans of their own, named by their route template.
    assert receiver.named("GET /api/jobs/{id}")
    assert set(receiver.paths) == {"/v1/traces"}


async def test_a_client_traceparent_makes_the_job_part_of_the_clients_trace() -> None:
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    async with traced_app() as (receiver, client):
        response = await client.post(
            "/api/demo.count/enqueue",
            json={"content": {"n": 0}},
            headers={"traceparent": traceparent},
        )
        assert response.status_code == 202, response.text
        job = response.json()
        await job_finished(client, job["id"])
    server = only(receiver.named(ENQUEUE))
    assert (server.trace_id, server.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    attempt = only(receiver.of_job(job["id"]))
    assert attempt.trace_id == CLIENT_TRACE
    assert attempt.parent_span_id == server.span_id


async def test_each_attempt_has_a_span_and_a_failure_is_an_error() -> None:
    async with traced_app() as (receiver, client):
        flaky = await post_json(
            client, "/api/demo.flaky/enqueue", {"content": {"failures": 1}}, 202
        )
        failing = await post_json(
            client,
            "/api/demo.fail/enqueue",
            {"content": {"mode": "reported", "message": "boom"}},
            202,
        )
        assert (await job_finished(client, flaky["id"]))["state"] == "succeeded"
        assert (await job_finished(client, failing["id"]))["state"] == "failed"
    enqueues = {s.trace_id: s for s in receiver.named(ENQUEUE)}
    first, second = sorted(
        receiver.of_job(flaky["id"]), key=lambda s: s.attributes["asyncproc.attempt"]
    )
    assert (first.attributes["asyncproc.attempt"], second.attributes["asyncproc.attempt"]) == (1, 2)
    for span in (first, second):  # every attempt is a child of the enqueue request
        assert span.parent_span_id == enqueues[span.trace_id].span_id
    assert first.trace_id == second.trace_id
    assert first.status == "STATUS_CODE_ERROR"
    assert first.attributes["asyncproc.outcome"] == "queued"  # retried
    assert first.attributes["asyncproc.error_id"] == "demo.transient"
    assert second.status == "STATUS_CODE_OK"
    failed = only(receiver.of_job(failing["id"]))
    assert failed.status == "STATUS_CODE_ERROR"
    assert failed.attributes["asyncproc.outcome"] == "failed"
    assert "demo.failed" in failed.status_message


async def test_jobs_a_job_starts_are_in_its_trace() -> None:
    async with traced_app() as (receiver, client):
        selection = await post_json(
            client, "/api/demo.select/enqueue", {"content": {"count": 2, "prefix": "t"}}, 202
        )
        await job_finished(client, selection["id"])
        response = await client.get("/api/jobs", params={"parent": selection["id"]})
        children = [item["id"] for item in response.json()["items"]]
        assert len(children) == 2
        for child in children:
            await job_finished(client, child)
    parent = only(receiver.of_job(selection["id"]))
    for child in children:
        span = only(receiver.of_job(child))
        assert (span.trace_id, span.parent_span_id) == (parent.trace_id, parent.span_id)


async def test_an_endpoint_ending_with_the_traces_path_is_used_as_it_is() -> None:
    async with otlp_receiver() as receiver:
        app = demo_app(otel_endpoint=f"{receiver.url}/v1/traces/")
        async with api_client(app) as client:
            assert (await client.get("/health")).status_code == 200
        assert set(receiver.paths) == {"/v1/traces"}
        assert only(receiver.named("GET /health")).attributes["http.response.status_code"] == 200


async def test_tracing_off_adds_no_middleware_and_no_hook() -> None:
    app = demo_app()
    plain = len(app.user_middleware)
    async with api_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        hooks = app.state.service.hooks
        assert hooks.around_attempt == []
        assert all(getattr(h, "__self__", None) is None for h in hooks.before_enqueue)
    assert not hasattr(app.state, "tracing")
    traced = demo_app(otel_endpoint="http://127.0.0.1:9")
    assert len(traced.user_middleware) == plain + 1


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    code = (
        "import sys; from asyncproc.config import load_settings; "
        "from asyncproc.server import create_app; create_app(load_settings(environ={})); "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "[]"


def test_a_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"ASYNCPROC_OTEL_ENDPOINT": "127.0.0.1:4318"})
    assert caught.value.key == "otel_endpoint"


def test_without_the_sdk_start_up_says_which_extra_to_install() -> None:
    # The SDK made unimportable in a fresh interpreter, as if the extra were missing.
    code = (
        "import sys; sys.modules['opentelemetry'] = None; "
        "from asyncproc.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {"PATH": "/usr/bin:/bin", "ASYNCPROC_OTEL_ENDPOINT": "http://127.0.0.1:4318"}
    done = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", "8765"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "otel_endpoint" in lines[0]
    assert "pip install 'asyncproc[otel]'" in lines[0]


async def test_a_failing_around_attempt_hook_never_breaks_the_job() -> None:
    plugin = Registry()

    @plugin.around_attempt
    @asynccontextmanager
    async def broken(attempt: Attempt) -> AsyncIterator[None]:
        raise RuntimeError("hook bug")
        yield  # pragma: no cover

    seen: list[tuple[int, str | None]] = []

    @plugin.around_attempt
    @asynccontextmanager
    async def watching(attempt: Attempt) -> AsyncIterator[None]:
        yield
        seen.append((attempt.job.attempt, attempt.outcome))

    async with api_client(demo_app(plugin)) as client:
        job = await post_json(client, "/api/demo.count/enqueue", {"content": {"n": 0}}, 202)
        assert (await job_finished(client, job["id"]))["state"] == "succeeded"
    assert seen == [(1, "succeeded")]


async def test_a_handler_runs_inside_its_attempts_span() -> None:
    from opentelemetry import trace

    from asyncproc import JobContext
    from asyncproc.context import BlockingJobContext

    plugin = Registry()

    def current_span() -> str:
        return format(trace.get_current_span().get_span_context().span_id, "016x")

    @plugin.job("t.async")
    async def in_task(ctx: JobContext, content: Any) -> str:
        return current_span()

    @plugin.job("t.blocking")
    def in_thread(ctx: BlockingJobContext, content: Any) -> str:
        return current_span()

    async with traced_app(plugin) as (receiver, client):
        ids = []
        for kind in ("t.async", "t.blocking"):
            job = await post_json(client, f"/api/{kind}/enqueue", {"content": None}, 202)
            assert (await job_finished(client, job["id"]))["state"] == "succeeded"
            result = await client.get(f"/api/jobs/{job['id']}/result")
            ids.append((job["id"], result.text))
    for job_id, seen in ids:
        assert seen == only(receiver.of_job(job_id)).span_id


async def test_requests_refused_at_the_door_and_server_errors_are_traced_too() -> None:
    plugin = Registry()

    @plugin.route("/api/t/broken", methods=["GET"])
    async def broken(request: Any) -> Any:
        raise RuntimeError("bug")

    async with traced_app(plugin) as (receiver, client):
        huge = await client.get("/api/kinds", headers={"x-big": "x" * 70_000})
        assert huge.status_code == 431
        assert (await client.get("/api/t/broken")).status_code == 500
    refused = only([s for s in receiver.spans if s.attributes.get("url.path") == "/api/kinds"])
    assert refused.attributes["http.response.status_code"] == 431
    assert refused.status == "STATUS_CODE_UNSET"  # a 4xx is the client's error, not ours
    failed = only(receiver.named("GET /api/t/broken"))
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.status == "STATUS_CODE_ERROR"
