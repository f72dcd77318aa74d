"""The spans of a node, with the OpenTelemetry SDK (the `otel` extra).

Imported by `asyncproc.plugins.tracing` only when `otel_endpoint` is set. Each app
has a TracerProvider of its own, never the global one: a process may run several
apps (tests do), each exporting to its own endpoint and flushing when it stops. The
current span still travels in OpenTelemetry's context (a context variable), so a
handler's own instrumented calls nest under its attempt's span.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import msgspec
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from asyncproc.config import Settings
from asyncproc.hooks import Attempt, Draft, Hooks
from asyncproc.model import JobState

__all__ = ["ServerSpans", "Tracing", "traces_url"]

TRACES_PATH = "/v1/traces"
PROPAGATOR = TraceContextTextMapPropagator()
# The request headers the W3C trace context is read from.
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})


def traces_url(endpoint: str) -> str:
    """Where OTLP/HTTP traces go: `<endpoint>/v1/traces`, or `endpoint` itself when it
    already ends with `/v1/traces`."""
    url = endpoint.rstrip("/")
    return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


class Tracing:
    """One node's tracing: its TracerProvider while it runs, and the hooks that use it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = traces_url(settings.otel_endpoint)
        self.tracer: trace.Tracer | None = None  # None: not running, nothing is traced

    @asynccontextmanager
    async def running(self, hooks: Hooks) -> AsyncIterator[None]:
        """Export spans and add this node's tracing hooks while the node runs; then
        remove them and flush what is left."""
        resource = Resource.create({"asyncproc.role": str(self.settings.role)})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            # `OTEL_SERVICE_NAME` (the SDK reads it) names the service; else asyncproc.
            resource = resource.merge(Resource({"service.name": "asyncproc"}))
        # Shut down by this lifespan, not at exit: no atexit hook keeping every app's provider.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url)))
        self.tracer = provider.get_tracer("asyncproc")
        hooks.before_enqueue.append(self.stamp)
        hooks.around_attempt.append(self.attempt)
        try:
            yield
        finally:
            hooks.before_enqueue.remove(self.stamp)
            hooks.around_attempt.remove(self.attempt)
            self.tracer = None
            # Flushing posts the last batch: not on the event loop.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(provider.shutdown)

    async def stamp(self, draft: Draft) -> None:
        """Before-enqueue hook: keep the current span's context (the enqueue request's
        server span, or the attempt of the job that starts this one) with the job."""
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        traceparent = carrier.get("traceparent")
        if traceparent is not None:
            draft.job = msgspec.structs.replace(draft.job, traceparent=traceparent)

    @asynccontextmanager
    async def attempt(self, attempt: Attempt) -> AsyncIterator[None]:
        """Around-attempt hook: run the attempt in a span, the child of the context the
        job was enqueued in; its status is an error when the attempt failed."""
        tracer = self.tracer
        if tracer is None:
            yield
            return
        job = attempt.job
        parent = PROPAGATOR.extract({"traceparent": job.traceparent}) if job.traceparent else None
        span = tracer.start_span(
            f"job {job.kind}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "asyncproc.job_id": job.id,
                "asyncproc.kind": job.kind,
                "asyncproc.attempt": job.attempt,
                "asyncproc.routing": job.proc_routing,
            },
        )
        with trace.use_span(span, end_on_exit=True):
            try:
                yield
            except BaseException:
                # Cut off (the node shuts down): the job goes back to the queue.
                span.set_attribute("asyncproc.outcome", "cut_off")
                span.set_status(Status(StatusCode.ERROR, "the attempt was cut off"))
                raise
            _set_outcome(span, attempt)


def _set_outcome(span: trace.Span, attempt: Attempt) -> None:
    outcome, error = attempt.outcome, attempt.error
    if outcome is None:
        return  # it ended elsewhere (stopped, timed out or taken back): that record says
    span.set_attribute("asyncproc.outcome", str(outcome))
    if error is not None and error.error_id:
        span.set_attribute("asyncproc.error_id", error.error_id)
    if outcome is JobState.SUCCEEDED:
        span.set_status(Status(StatusCode.OK))
    elif outcome in (JobState.FAILED, JobState.QUEUED):  # failed, for good or for a retry
        detail = (
            ": ".join(part for part in (error.error_id, error.tech_msg) if part)
            if error is not None
            else "failed"
        )
        span.set_status(Status(StatusCode.ERROR, detail or "failed"))


class ServerSpans:
    """ASGI middleware: a server span around each HTTP request, named by its method and
    route template (`POST /api/{kind}/enqueue`), a child of the client's `traceparent`
    when it sent one; status code attributes, an error status for 5xx answers."""

    def __init__(self, app: Any, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        tracer = self.tracing.tracer
        if tracer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CONTEXT_HEADERS
        }
        method = scope["method"]
        span = tracer.start_span(
            method,
            context=PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        status: int | None = None

        async def send_traced(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send_traced)
            except Exception:
                status = status or 500  # the server error handler outside answers it
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status is not None:  # None: the client went away before an answer
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
