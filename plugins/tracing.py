"""Built-in plugin: traces with OpenTelemetry (API.md section 16, Traces).

On when `otel_endpoint` is set, and then only: the OpenTelemetry SDK (the `otel`
extra) is imported by `asyncproc.plugins.otel_spans` when the app is built, never
otherwise, and with the setting empty no middleware, hook or thread is added (the
only cost is this module's import). With it set:

- a check refuses to build the app when the SDK is not installed (one line naming
  the extra, exit 2 like every bad setting);
- a middleware puts a server span around every HTTP request;
- while the node runs, a before-enqueue hook stores the current span's W3C
  `traceparent` with each new job, and an around-attempt hook runs each attempt of
  a job in a span that is its child, on whichever node runs it;
- the node's own TracerProvider is shut down (its spans flushed) when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.middleware import Middleware

from asyncproc.config import Settings
from asyncproc.hooks import Node
from asyncproc.registry import Registry, optional_backend

registry = Registry()

SPANS_MODULE = "asyncproc.plugins.otel_spans"


def _spans_module() -> Any:
    return optional_backend(SPANS_MODULE, "otel_endpoint", "otel")


@registry.check
def needs_sdk(settings: Settings, kinds: Registry) -> None:
    """With `otel_endpoint` set, refuse to start unless the OpenTelemetry SDK is installed."""
    if settings.otel_endpoint:
        _spans_module()


@registry.middleware
def server_spans(node: Node) -> Middleware | None:
    """The middleware that traces every HTTP request, when tracing is on (else None)."""
    if not node.settings.otel_endpoint:
        return None
    spans = _spans_module()
    # The node's tracing, started by the lifespan below; until then (and after) the
    # middleware lets requests through untraced.
    tracing = spans.Tracing(node.settings)
    node.app.state.tracing = tracing
    middleware: Middleware = Middleware(spans.ServerSpans, tracing=tracing)
    return middleware


@registry.lifespan
@asynccontextmanager
async def tracing(node: Node) -> AsyncIterator[None]:
    """Export this node's spans while it runs; flush them when it stops."""
    tracing = getattr(node.app.state, "tracing", None)
    if tracing is None:
        yield
        return
    async with tracing.running(node.service.hooks):
        yield
