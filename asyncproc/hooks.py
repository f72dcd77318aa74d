"""The hook layer: how plugins extend a node without special cases in the service.

A plugin's `Registry` carries a `Hooks`: checks (validate the settings against
the registered kinds when the app is built, so a bad config stops start-up with
one line), lifespans (background work while the node runs), routes (endpoints of its own), before-enqueue hooks (validate,
refuse, rewrite a job about to be stored) and after-change hooks (see every
stored change with the record before and after it). Before-hooks run in the
order they were registered, after-hooks in reverse (as dramatiq's middleware
`emit_before` / `emit_after`); a failing after-hook is logged and never breaks
the job whose change it saw.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

from .apidoc import Answer, Operation
from .model import Job, OnConflict

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .config import Settings
    from .registry import JobKind
    from .service import JobService

__all__ = ["AfterChange", "BeforeEnqueue", "Draft", "Hooks", "Lifespan", "Node", "SettingsCheck"]

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


SettingsCheck = Callable[["Settings", Any], None]
Lifespan = Callable[[Node], AbstractAsyncContextManager[Any]]
BeforeEnqueue = Callable[[Draft], Awaitable[None]]
AfterChange = Callable[[Job | None, Job], Awaitable[None]]


class Hooks:
    """The hooks of one plugin, or of a whole node once the plugins are included."""

    def __init__(self) -> None:
        self.checks: list[SettingsCheck] = []
        self.lifespans: list[Lifespan] = []
        self.routes: list[BaseRoute] = []
        self.before_enqueue: list[BeforeEnqueue] = []
        # Before-enqueue hooks of one kind only (no cost to other kinds' enqueues).
        self.before_enqueue_of: dict[str, list[BeforeEnqueue]] = {}
        self.after_change: list[AfterChange] = []
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
        self.before_enqueue += other.before_enqueue
        for kind, hooks in other.before_enqueue_of.items():
            self.before_enqueue_of.setdefault(kind, []).extend(hooks)
        self.after_change += other.after_change
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
