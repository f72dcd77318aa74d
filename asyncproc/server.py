"""The ASGI application: backends picked by setting, routes by role, the lifespan
that starts and stops the worker pool and the sweeper.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .api import EXCEPTION_HANDLERS, IncomingAt, api_routes, json_response
from .config import Settings, load_settings
from .drain import Drain
from .errors import BackendUnavailable
from .hooks import Node
from .input_limits import hidden_header_names
from .interfaces import Queue, StateStore
from .openapi import BackendHealth, Health, openapi_document
from .origins import Origins
from .registry import (
    Registry,
    apply_kind_settings,
    include_plugins,
    load_plugins,
    optional_backend,
    switched_on,
)
from .safe_answers import PAGE_CSP, SafeStarlette
from .service import JobService
from .worker import WorkerPool

__all__ = ["create_app", "open_queue", "open_store"]

log = logging.getLogger("asyncproc")

# setting value -> (module, class, extra to install)
STORES = {
    "memory": ("asyncproc.backends.memory", "MemoryStateStore", None),
    "redis": ("asyncproc.backends.redis", "RedisStateStore", "redis"),
}
QUEUES = {
    "memory": ("asyncproc.backends.memory", "MemoryQueue", None),
    "rabbitmq": ("asyncproc.backends.rabbitmq", "RabbitMQQueue", "rabbitmq"),
}


def _backend_class(table: dict[str, tuple[str, str, str | None]], key: str, value: str) -> Any:
    module_name, class_name, extra = table[value]
    return getattr(optional_backend(module_name, key, extra), class_name)


def open_store(settings: Settings) -> StateStore:
    """The StateStore named by `settings.state` (not yet started)."""
    cls = _backend_class(STORES, "state", settings.state)
    store: StateStore = (
        cls(max_finished=settings.max_finished)
        if settings.state == "memory"
        else cls.from_settings(settings)
    )
    return store


def open_queue(settings: Settings) -> Queue:
    """The Queue named by `settings.queue` (not yet started)."""
    cls = _backend_class(QUEUES, "queue", settings.queue)
    queue: Queue = cls() if settings.queue == "memory" else cls.from_settings(settings)
    return queue


@contextmanager
def _async_library_pinned() -> Iterator[None]:
    """Tell sniffio, for this event-loop thread, which async library runs it.

    Otherwise every anyio call (cancel scopes, events, the clock) sniffs for it
    through `asyncio.current_task()`, a measurable share of a short job's cost.
    """
    try:
        import sniffio
    except ImportError:  # anyio works without it, and then there is nothing to pin
        yield
        return
    previous = sniffio.thread_local.name
    sniffio.thread_local.name = sniffio.current_async_library()
    try:
        yield
    finally:
        sniffio.thread_local.name = previous


def _web_dir() -> str:
    return str(resources.files("asyncproc.web"))


def create_app(
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    store: StateStore | None = None,
    queue: Queue | None = None,
) -> Starlette:
    """The asyncproc app; settings default to `load_settings()` (file + environment).

    `registry`, `store` and `queue` replace what the settings would pick (tests,
    embedding).
    """
    settings = settings or load_settings()
    if registry is None:
        registry = load_plugins(settings.plugins)
    elif not registry.builtins:
        # Schedules, triggers and callbacks work for an embedder's registry too.
        full = load_plugins(())
        full.include(registry)
        registry = full
    include_plugins(registry, switched_on(settings))
    apply_kind_settings(registry, settings)
    for check in registry.hooks.checks:
        check(settings, registry)
    store = store if store is not None else open_store(settings)
    queue = queue if queue is not None else open_queue(settings)
    service = JobService(
        registry=registry,
        store=store,
        queue=queue,
        processing_timeout=settings.processing_timeout,
        retention=settings.retention,
        expose_tech_info=settings.expose_tech_info,
        max_queue_depth=settings.max_queue_depth,
        max_deliveries=settings.max_deliveries,
        hidden_headers=hidden_header_names(settings.hidden_headers),
    )
    worker = (
        WorkerPool(
            service,
            routings=settings.routings,
            concurrency=settings.concurrency,
            shutdown_grace=settings.shutdown_grace,
            max_deliveries=settings.max_deliveries,
            lease=settings.lease,
            leases=settings.state != "memory",
        )
        if settings.role.runs_jobs
        else None
    )
    # The memory queue ends with this process: nothing can be given back to it.
    drain = Drain(
        service, worker, grace=settings.shutdown_grace, ends_with_process=queue.name == "memory"
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.enter_context(_async_library_pinned())
            await store.start()
            stack.push_async_callback(store.aclose)
            await queue.start()
            stack.push_async_callback(queue.aclose)
            for hook in registry.hooks.lifespans:
                await stack.enter_async_context(hook(node))
            async with anyio.create_task_group() as tasks:
                if settings.role.serves_api or settings.role.runs_jobs:
                    tasks.start_soon(service.run_sweeper, settings.sweep_interval)
                if worker is not None:
                    await tasks.start(worker.run)
                kinds = [kind.name for kind in registry]
                log.info(
                    "asyncproc %s node ready (state=%s, queue=%s); plugins: %s; kinds: %s",
                    settings.role,
                    store.name,
                    queue.name,
                    ", ".join(registry.plugins),
                    ", ".join(kinds),
                    extra={
                        "role": str(settings.role),
                        "state": store.name,
                        "queue": queue.name,
                        "plugins": registry.plugins,
                        "kinds": kinds,
                    },
                )
                try:
                    yield
                finally:
                    # Running jobs finish (or are given back) before the sweeper and
                    # the rest stop: cancelling them all at once left the grace
                    # nothing to wait for. `asyncproc serve` has usually drained
                    # already, while HTTP still answered; then this returns at once.
                    await drain.finish()
                    tasks.cancel_scope.cancel()

    routes: list[BaseRoute] = []
    if settings.role.serves_api:
        # The API first: enqueue, the hot route, is then the first a request is matched
        # against (`/health` and the rest cannot match its paths).
        routes += api_routes(registry.hooks.routes)
    routes += [Route("/health", health, methods=["GET"]), *registry.hooks.node_routes]
    if settings.role.serves_api:
        routes += [
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/", page, methods=["GET"]),
            Route("/overview", page, methods=["GET"]),
            Route("/jobs/{id}", page, methods=["GET"]),
            Route("/new", page, methods=["GET"]),
            Route("/schedules", page, methods=["GET"]),
            Route("/dead-letters", page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=_web_dir()), name="static"),
        ]
    # SafeStarlette: every answer, a 500 included, carries nosniff & co (safe_answers.py).
    app = SafeStarlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(IncomingAt, refuse=drain.refusal)],
        lifespan=lifespan,
    )
    node = Node(settings, service, app)
    added = [m for m in (factory(node) for factory in registry.hooks.middleware) if m is not None]
    # Plugins' middleware outside the door checks (their refusals are seen too), the first
    # registered outermost; the origin rule outside them all, so that a refusal of theirs
    # (auth's 401) still carries the CORS headers an allowed origin's page needs to read it.
    app.user_middleware[:0] = [Middleware(Origins, allowed=settings.cors_origins), *added]
    app.state.settings = settings
    app.state.service = service
    app.state.worker = worker
    app.state.drain = drain
    return app


async def health(request: Request) -> Response:
    """GET /health: 200 when every backend answers, 503 naming the ones that do not."""
    settings: Settings = request.app.state.settings
    service: JobService = request.app.state.service
    backends: dict[str, BackendHealth] = {}
    healthy = True
    for part, backend in (("state", service.store), ("queue", service.queue)):
        try:
            with anyio.fail_after(2):
                await backend.ping()
            backends[part] = BackendHealth(backend.name, True)
        except (BackendUnavailable, TimeoutError, OSError) as exc:
            healthy = False
            backends[part] = BackendHealth(backend.name, False, str(exc))
    body = Health("ok" if healthy else "unavailable", str(settings.role), backends)
    return json_response(body, 200 if healthy else 503)


async def openapi(request: Request) -> Response:
    """GET /openapi.json"""
    document = request.app.state.__dict__.get("_openapi")
    if document is None:
        document = openapi_document(request.app.state.service.registry)
        request.app.state._openapi = document
    return json_response(document)


async def page(request: Request) -> Response:
    """The web page (`/`, `/jobs/{id}`, `/new`, `/schedules`, `/dead-letters`: the page
    routes itself)."""
    headers = {"Content-Security-Policy": PAGE_CSP}
    return FileResponse(f"{_web_dir()}/index.html", headers=headers, media_type="text/html")
