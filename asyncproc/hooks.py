"""The hook layer: how plugins extend a node without special cases in the service.

A plugin's `Registry` carries a `Hooks`: checks (validate the settings against
the registered kinds when the app is built, so a bad config stops start-up with
one line; a check may also add to the app's registry hooks that only some settings
need, so that an app without them pays nothing), lifespans (background work while
the node runs), routes (endpoints of its own), before-enqueue hooks (validate,
refuse, rewrite a job about to be stored), after-change hooks (see every stored
change with the record before and after it), middleware (a Starlette `Middleware`
made for the node when the app is built, or none), around-attempt hooks (around
each attempt of a job on the node that runs it), job visibility (predicates that
hide jobs from the current caller, and query filters that narrow its job lists the
same way, so a store can use an index) and callback shapes (a kind's own message on
the callback exchange, in place of the status JSON). Before-hooks run in the order
they were registered, after-hooks in reverse (as dramatiq's middleware `emit_before` /
`emit_after`); a failing after-hook is logged and never breaks the job whose change
it saw.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

from .apidoc import Answer, Operation
from .model import ErrorInfo, Job, JobState, OnConflict

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from .config import Settings
    from .interfaces import JobQuery
    from .registry import JobKind
    from .service import JobService

__all__ = [
    "AfterChange",
    "AroundAttempt",
    "Attempt",
    "BeforeEnqueue",
    "CallbackShape",
    "Draft",
    "Hooks",
    "Lifespan",
    "ListFilter",
    "MiddlewareFactory",
    "Node",
    "SettingsCheck",
    "Visibility",
]

log = logging.getLogger("asyncproc.hooks")


class Node:
    """What a lifespan hook gets: this node's settings, service and app."""

    __slots__ = ("app", "service", "settings")

    def __init__(self, settings: Settings, service: JobService, app: Starlette) -> None:
        self.settings = settings
        self.service = service
        self.app = app


class Draft:
    """A job about to be stored; before-enqueue hooks may replace `job` or `on_conflict`."""

    __slots__ = ("job", "kind", "on_conflict")

    def __init__(self, kind: JobKind, job: Job, on_conflict: OnConflict) -> None:
        self.kind = kind
        self.job = job
        self.on_conflict = on_conflict


class Attempt:
    """What an around-attempt hook gets: the job as this attempt started (`running`, its
    `attempt` number), and, once the handler is done, how the attempt ended.

    `outcome` is the state the attempt leads to (`succeeded`, `failed`, `stopped`, or
    `queued` for a retry) with its `error`; it stays None when the attempt was cut off
    (the node shut down, or the job ended elsewhere meanwhile).
    """

    __slots__ = ("error", "job", "outcome")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.outcome: JobState | None = None
        self.error: ErrorInfo | None = None


SettingsCheck = Callable[["Settings", Any], None]
Lifespan = Callable[[Node], AbstractAsyncContextManager[Any]]
BeforeEnqueue = Callable[[Draft], Awaitable[None]]
AfterChange = Callable[[Job | None, Job], Awaitable[None]]
MiddlewareFactory = Callable[[Node], "Middleware | None"]
AroundAttempt = Callable[[Attempt], AbstractAsyncContextManager[Any]]
# Whether the current caller (as the plugin knows it, e.g. from a context variable)
# may see a job; one that may not is, to that caller, not there.
Visibility = Callable[[Job], bool]
# The same rule for job lists: the query narrowed to what the caller may see.
ListFilter = Callable[["JobQuery"], "JobQuery"]
# `shape(before, after)` -> the callback message body of a change (None: nothing to tell).
CallbackShape = Callable[[Job | None, Job], Awaitable[bytes | None]]


class Hooks:
    """The hooks of one plugin, or of a whole node once the plugins are included."""

    def __init__(self) -> None:
        self.checks: list[SettingsCheck] = []
        self.lifespans: list[Lifespan] = []
        self.routes: list[BaseRoute] = []
        # Routes every node serves whatever its role, as /health (a worker's /metrics).
        self.node_routes: list[BaseRoute] = []
        self.before_enqueue: list[BeforeEnqueue] = []
        # Before-enqueue hooks of one kind only (no cost to other kinds' enqueues).
        self.before_enqueue_of: dict[str, list[BeforeEnqueue]] = {}
        self.after_change: list[AfterChange] = []
        self.middleware: list[MiddlewareFactory] = []
        self.around_attempt: list[AroundAttempt] = []
        self.visibility: list[Visibility] = []
        self.list_filters: list[ListFilter] = []
        # Kind -> the shape of its callback messages (default: the status JSON).
        self.callback_shapes: dict[str, CallbackShape] = {}
        # The OpenAPI document of `routes`: their declared operations (`apidoc`), and
        # answers every operation may give (e.g. 401/403 of an auth plugin).
        self.openapi_operations: list[Operation] = []
        self.openapi_answers: dict[int, Answer] = {}
        # Raw additions: paths written by hand, and the Structs their `$ref`s name.
        self.openapi_paths: dict[str, Any] = {}
        self.openapi_types: list[Any] = []

    def include(self, other: Hooks) -> None:
        """Add the hooks of `other` after these."""
        self.checks += other.checks
        self.lifespans += other.lifespans
        self.routes += other.routes
        self.node_routes += other.node_routes
        self.before_enqueue += other.before_enqueue
        for kind, hooks in other.before_enqueue_of.items():
            self.before_enqueue_of.setdefault(kind, []).extend(hooks)
        self.after_change += other.after_change
        self.middleware += other.middleware
        self.around_attempt += other.around_attempt
        self.visibility += other.visibility
        self.list_filters += other.list_filters
        self.callback_shapes.update(other.callback_shapes)
        self.openapi_operations += other.openapi_operations
        self.openapi_answers.update(other.openapi_answers)
        self.openapi_paths.update(other.openapi_paths)
        self.openapi_types += [t for t in other.openapi_types if t not in self.openapi_types]

    async def emit_before_enqueue(self, draft: Draft) -> None:
        """Run the before-enqueue hooks in order, then those of the draft's kind; an
        exception refuses the enqueue."""
        for hook in self.before_enqueue:
            await hook(draft)
        for hook in self.before_enqueue_of.get(draft.kind.name, ()):
            await hook(draft)

    def visible(self, job: Job) -> bool:
        """Whether the current caller may see `job` (every visibility hook agrees)."""
        return all(sees(job) for sees in self.visibility)

    def narrow(self, query: JobQuery) -> JobQuery:
        """`query` narrowed by every list filter to the jobs the current caller may see."""
        for narrow in self.list_filters:
            query = narrow(query)
        return query

    def watches(self, after: Job) -> bool:
        """Whether any after-change hook wants to see a change to `after`'s state (a hook
        with a `states` attribute sees only changes into those states: no call, no
        coroutine, for the others)."""
        for hook in self.after_change:
            states = getattr(hook, "states", None)
            if states is None or after.state in states:
                return True
        return False

    async def emit_after_change(self, before: Job | None, after: Job) -> None:
        """Run the after-change hooks in reverse order; a failure is logged, never raised.

        `before` is None when `after` was just created.
        """
        for hook in reversed(self.after_change):
            states = getattr(hook, "states", None)
            if states is not None and after.state not in states:
                continue
            try:
                await hook(before, after)
            except Exception:
                log.exception("after-change hook %r failed for job %s", hook, after.id)

    @asynccontextmanager
    async def around(self, attempt: Attempt) -> AsyncIterator[None]:
        """Enter the around-attempt hooks for `attempt`, the first registered outermost.

        A hook failing on entry or exit is logged and never breaks the job (its
        outcome must still be stored); the attempt's own exceptions pass through.
        """
        async with AsyncExitStack() as stack:
            for hook in self.around_attempt:
                await stack.enter_async_context(_Guarded(hook, attempt))
            yield


class _Guarded:
    """An around-attempt hook whose own failures are logged, not raised."""

    __slots__ = ("attempt", "hook", "manager")

    def __init__(self, hook: AroundAttempt, attempt: Attempt) -> None:
        self.hook = hook
        self.attempt = attempt
        self.manager: AbstractAsyncContextManager[Any] | None = None

    async def __aenter__(self) -> None:
        try:
            manager = self.hook(self.attempt)
            await manager.__aenter__()
        except Exception:
            log.exception(
                "around-attempt hook %r failed for job %s", self.hook, self.attempt.job.id
            )
        else:
            self.manager = manager

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self.manager is None:
            return False
        try:
            await self.manager.__aexit__(exc_type, exc, tb)
        except Exception as raised:
            if raised is not exc:
                log.exception(
                    "around-attempt hook %r failed for job %s", self.hook, self.attempt.job.id
                )
        return False  # never swallows what the attempt raised
