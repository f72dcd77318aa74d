"""Job kinds: the `Registry` and its `job` decorator, and plugin loading.

A plugin is a plain module with a module-level `registry = Registry()` whose
`@registry.job(...)` handlers it defines; the app includes each plugin's
registry into its own. Installed packages can name such modules in the
`asyncproc.plugins` entry-point group.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.routing import Route

from .apidoc import Operation, decode_json
from .errors import ConfigError, InvalidContent, PluginError, UnknownKind
from .hooks import AfterChange, BeforeEnqueue, Hooks, Lifespan, SettingsCheck
from .limits import parse_rate
from .model import ErrorInfo, OnConflict, Uniqueness

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "Handler",
    "JobKind",
    "Registry",
    "apply_kind_settings",
    "load_plugins",
    "optional_backend",
]

KIND_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

Handler = Callable[[Any, Any], Awaitable[Any]] | Callable[[Any, Any], Any]
Check = Callable[[Any], None]


class JobKind:
    """A registered job kind: its handler, content type and options."""

    __slots__ = (
        "check",
        "compensation",
        "content_type",
        "decoder",
        "description",
        "handler",
        "is_async",
        "max_concurrency",
        "name",
        "on_conflict",
        "processing_timeout",
        "rate_limit",
        "retention",
        "retries",
        "retry_delay",
        "retry_max_delay",
        "retry_on",
        "selection",
        "title",
        "uniqueness",
    )

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        content: Any = Any,
        title: str | None = None,
        description: str | None = None,
        processing_timeout: float | None = None,
        retention: float | None = None,
        retries: int = 0,
        unique: Uniqueness | str = Uniqueness.NONE,
        on_conflict: OnConflict | str = OnConflict.REJECT,
        check: Check | None = None,
        retry_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (),
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> None:
        if not KIND_NAME.fullmatch(name):
            raise PluginError(f"kind name {name!r} does not match {KIND_NAME.pattern}")
        if retries < 0:
            raise PluginError(f"kind {name}: retries must be >= 0")
        self.name = name
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.content_type = content
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(content)
        doc = inspect.getdoc(handler) or ""
        self.title = title or (doc.splitlines()[0] if doc else name)
        self.description = description if description is not None else doc
        self.processing_timeout = processing_timeout
        self.retention = retention
        self.retries = retries
        self.uniqueness = Uniqueness(unique)
        self.on_conflict = OnConflict(on_conflict)
        self.check = check
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.retry_on = retry_on
        # The kind compensating this one's final failures (`<kind>.compensate`), if any.
        self.compensation: str | None = None
        # Start limits across all nodes (`limits.StartGate`); `[kinds."<kind>"]` may set them.
        if max_concurrency is not None and max_concurrency < 1:
            raise PluginError(f"kind {name}: max_concurrency must be >= 1")
        if rate_limit is not None:
            try:
                parse_rate(rate_limit)
            except ValueError as exc:
                raise PluginError(f"kind {name}: rate_limit {exc}") from None
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        # For a selection kind (section 11): the kind its items start.
        self.selection: str | None = None

    def read_content(self, raw: bytes) -> Any:
        """The typed content, as the handler gets it (5.0 taken for an integer field)."""
        return decode_json(raw, self.content_type, self.decoder)

    def decode_content(self, raw: bytes) -> Any:
        """The typed content; raises `InvalidInput` naming what is wrong."""
        try:
            content = self.read_content(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidContent(_content_message(str(exc))) from None
        if self.check is not None:
            try:
                self.check(content)
            except (ValueError, TypeError) as exc:
                raise InvalidContent(f"content: {exc}") from None
        return content

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the content."""
        return msgspec.json.schema(self.content_type)


def _content_message(text: str) -> str:
    # msgspec says "... - at `$.n`"; the client sent it under `content`.
    return "content: " + text.replace("`$", "`$.content", 1)


class Compensation(msgspec.Struct, frozen=True, rename="camel"):
    """What a compensation handler gets: the failed job, its content, its last error and
    the JSON results of its completed durable steps (by name, oldest first)."""

    job_id: str
    content: Any
    error: ErrorInfo | None
    steps: dict[str, Any]


class Registry:
    """A set of job kinds; plugins fill one, the app includes them in its own."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}
        self.hooks = Hooks()
        self.builtins = False  # True once the built-in plugins are included

    def job(
        self,
        kind: str,
        *,
        content: Any = Any,
        title: str | None = None,
        description: str | None = None,
        processing_timeout: float | None = None,
        retention: float | None = None,
        retries: int = 0,
        retry_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        retry_on: tuple[type[BaseException], ...] = (),
        unique: Uniqueness | str = Uniqueness.NONE,
        on_conflict: OnConflict | str = OnConflict.REJECT,
        check: Check | None = None,
        compensate: Handler | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of `kind`.

        `content` is the msgspec type the JSON content is validated into;
        `processing_timeout` and `retention` (seconds) override the settings;
        `retries` is how many more attempts a retryable failure gets (a
        `RetryableJobError`, or an exception of a type in `retry_on`), each after a
        backoff of `retry_delay` seconds doubling up to `retry_max_delay` (±25 %
        jitter); `unique` is the key rule (`none`, `active`, `once`) and
        `on_conflict` what an enqueue meeting the key's holder does (`reject`,
        `existing`, `replace`); `check(content)` is a pre-start validation whose
        ValueError becomes a 422; `compensate(ctx, compensation)` undoes a job that
        failed for good: it runs as kind `<kind>.compensate` with a `Compensation`;
        `max_concurrency` (running jobs of the kind across all nodes) and `rate_limit`
        (`"<n>/s"`, `"<n>/m"`, `"<n>/h"`: starts in any such window, across all nodes)
        hold its jobs in `queued` until they may start.
        """

        def register(handler: Handler) -> Handler:
            job_kind = JobKind(
                kind,
                handler,
                content=content,
                title=title,
                description=description,
                processing_timeout=processing_timeout,
                retention=retention,
                retries=retries,
                unique=unique,
                on_conflict=on_conflict,
                check=check,
                retry_delay=retry_delay,
                retry_max_delay=retry_max_delay,
                retry_on=retry_on,
                max_concurrency=max_concurrency,
                rate_limit=rate_limit,
            )
            self.add(job_kind)
            if compensate is not None:
                undo = JobKind(
                    f"{kind}.compensate",
                    compensate,
                    content=Compensation,
                    title=f"Compensate {job_kind.title}",
                    description=inspect.getdoc(compensate) or "",
                    retention=retention,
                    retries=max(3, retries),
                    retry_delay=retry_delay,
                    retry_max_delay=retry_max_delay,
                )
                self.add(undo)
                job_kind.compensation = undo.name
            return handler

        return register

    def selection(
        self,
        kind: str,
        *,
        target: str,
        content: Any = Any,
        key: Callable[[Any], str] | None = None,
        total: Callable[[Any], int | None] | None = None,
        title: str | None = None,
        description: str | None = None,
        processing_timeout: float | None = None,
        retention: float | None = None,
        retries: int = 0,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated item generator as selection kind `kind` (API.md 11).

        `generate(ctx, params)` yields `(key, content)` items (an async or a plain
        generator); each becomes a `target` job with that key. The selection job's own
        rule is `active` on `key(params)` (default: the kind's name), so two runs of
        it never overlap; `total(params)`, when given, lets progress show a percent.
        """

        def register(generate: Callable[..., Any]) -> Callable[..., Any]:
            from .selection import selection_handler, selection_key_hook

            job_kind = JobKind(
                kind,
                selection_handler(kind, target, generate, total),
                content=content,
                title=title,
                description=description,
                processing_timeout=processing_timeout,
                retention=retention,
                retries=retries,
                unique=Uniqueness.ACTIVE,
            )
            job_kind.selection = target
            self.add(job_kind)
            key_of = key if key is not None else (lambda _params: kind)
            self.hooks.before_enqueue_of.setdefault(kind, []).append(selection_key_hook(key_of))
            return generate

        return register

    # -- hooks ----------------------------------------------------------------

    def check(self, hook: SettingsCheck) -> SettingsCheck:
        """Register `hook(settings, registry)`, run when the app is built; its
        `ConfigError` stops start-up naming the bad key."""
        self.hooks.checks.append(hook)
        return hook

    def lifespan(self, hook: Lifespan) -> Lifespan:
        """Register `hook(node)`, an async context manager entered while the node runs."""
        self.hooks.lifespans.append(hook)
        return hook

    def before_enqueue(self, hook: BeforeEnqueue | None = None, *, kind: str | None = None) -> Any:
        """Register `hook(draft)`, run before a job (of `kind`, else of any kind) is
        stored; it may rewrite or refuse. Use bare or as `@registry.before_enqueue(kind=...)`."""

        def register(hook: BeforeEnqueue) -> BeforeEnqueue:
            if kind is None:
                self.hooks.before_enqueue.append(hook)
            else:
                self.hooks.before_enqueue_of.setdefault(kind, []).append(hook)
            return hook

        return register(hook) if hook is not None else register

    def after_change(self, hook: AfterChange) -> AfterChange:
        """Register `hook(before, after)`, run after each stored change made on this node."""
        self.hooks.after_change.append(hook)
        return hook

    def route(self, path: str, methods: list[str]) -> Callable[[Any], Any]:
        """Register the decorated Starlette endpoint at `path` (served by API nodes)."""

        def register(endpoint: Any) -> Any:
            self.hooks.routes.append(Route(path, endpoint, methods=methods))
            return endpoint

        return register

    def document(self, *operations: Operation) -> None:
        """Declare the OpenAPI operations of this plugin's routes (`asyncproc.apidoc`)."""
        self.hooks.openapi_operations.extend(operations)

    def add(self, kind: JobKind) -> None:
        """Register a kind; a name registered twice is an error."""
        if kind.name in self._kinds:
            raise PluginError(f"kind {kind.name} is registered twice")
        self._kinds[kind.name] = kind

    def include(self, other: Registry) -> None:
        """Register every kind and every hook of `other`.

        The kinds are copied: settings applied to this registry's kinds (`[kinds.*]`)
        never reach another app built from the same plugins.
        """
        for kind in other:
            self.add(copy.copy(kind))
        self.hooks.include(other.hooks)

    def get(self, name: str) -> JobKind:
        """The kind called `name`; raises `UnknownKind`."""
        kind = self._kinds.get(name)
        if kind is None:
            raise UnknownKind(f"no job kind {name!r}")
        return kind

    def __iter__(self) -> Any:
        return iter(sorted(self._kinds.values(), key=lambda k: k.name))

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


def optional_backend(module: str, setting: str, extra: str | None) -> Any:
    """Import a backend module that needs an optional extra; `ConfigError` naming
    `setting` and the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"; install it with pip install 'asyncproc[{extra}]'" if extra else ""
        raise ConfigError(setting, f"unavailable: {exc}{hint}") from None


BUILTIN_PLUGINS = (
    "asyncproc.plugins.callbacks",
    "asyncproc.plugins.schedules",
    "asyncproc.plugins.triggers",
    "asyncproc.plugins.dead_letters",
)


def load_plugins(
    modules: Iterable[str],
    *,
    entry_point_group: str = "asyncproc.plugins",
    builtin: Iterable[str] = BUILTIN_PLUGINS,
) -> Registry:
    """A registry with the built-in plugins' hooks, the kinds and hooks of `modules`,
    and those of installed entry-point plugins."""
    registry = Registry()
    registry.builtins = True
    names = list(dict.fromkeys([*builtin, *modules]))
    for ep in entry_points(group=entry_point_group):
        if ep.value not in names:
            names.append(ep.value)
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(f"plugin {name}: cannot import: {exc}") from exc
        plugin = getattr(module, "registry", None)
        if not isinstance(plugin, Registry):
            raise PluginError(f"plugin {name}: no module-level `registry = Registry()`")
        registry.include(plugin)
    return registry


def apply_kind_settings(registry: Registry, settings: Settings) -> None:
    """Apply the `[kinds."<kind>"]` tables to the registered kinds; an unknown kind
    is a `ConfigError`."""
    for name, options in settings.kinds.items():
        if name not in registry:
            raise ConfigError(f"kinds.{name}", "no such kind is registered")
        kind = registry.get(name)
        if options.processing_timeout is not None:
            kind.processing_timeout = options.processing_timeout
        if options.retention is not None:
            kind.retention = options.retention
        if options.retries is not None:
            kind.retries = options.retries
        if options.unique is not None:
            kind.uniqueness = Uniqueness(options.unique)
        if options.on_conflict is not None:
            kind.on_conflict = OnConflict(options.on_conflict)
        if options.retry_delay is not None:
            kind.retry_delay = options.retry_delay
        if options.retry_max_delay is not None:
            kind.retry_max_delay = options.retry_max_delay
        if options.max_concurrency is not None:
            kind.max_concurrency = options.max_concurrency
        if options.rate_limit is not None:
            kind.rate_limit = options.rate_limit
