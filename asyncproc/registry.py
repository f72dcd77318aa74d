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

from . import messages
from .apidoc import Operation, decode_json
from .errors import ConfigError, InvalidContent, PluginError, UnknownKind
from .hooks import (
    AfterChange,
    AroundAttempt,
    BeforeEnqueue,
    Hooks,
    Lifespan,
    ListFilter,
    MiddlewareFactory,
    SettingsCheck,
    Visibility,
)
from .limits import parse_rate
from .model import ErrorInfo, OnConflict, Uniqueness

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "Handler",
    "JobKind",
    "Registry",
    "apply_kind_settings",
    "include_plugins",
    "load_plugins",
    "optional_backend",
    "switched_on",
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
        "external",
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
        # Run by processors outside over HTTP (`external.py`): `handler` is never called.
        self.external = False

    def read_content(self, raw: bytes) -> Any:
        """The typed content, as the handler gets it (5.0 taken for an integer field)."""
        return decode_json(raw, self.content_type, self.decoder)

    def decode_content(self, raw: bytes) -> Any:
        """The typed content; raises `InvalidInput` naming what is wrong."""
        try:
            content = self.read_content(raw)
        except msgspec.ValidationError as exc:  # before DecodeError: it is a subclass
            raise InvalidContent(
                messages.invalid_value(exc, self.content_type, raw, "content")
            ) from None
        except msgspec.DecodeError as exc:
            raise InvalidContent(messages.invalid_json(exc, raw, "content")) from None
        if self.check is not None:
            try:
                self.check(content)
            except (ValueError, TypeError) as exc:
                raise InvalidContent(f"content: {exc}") from None
        return content

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the content."""
        return msgspec.json.schema(self.content_type)


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
        self.plugins: list[str] = []  # the plugin modules included, by name

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
        `ConfigError` stops start-up naming the bad key. `registry` is the app's: the hook
        may add hooks to it that only these settings need."""
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

    def middleware(self, factory: MiddlewareFactory) -> MiddlewareFactory:
        """Register `factory(node)`, called when the app is built: the Starlette
        `Middleware` to wrap every HTTP request in (outside the node's own door checks;
        the first registered outermost), or None (then it costs nothing)."""
        self.hooks.middleware.append(factory)
        return factory

    def around_attempt(self, hook: AroundAttempt) -> AroundAttempt:
        """Register `hook(attempt)`, an async context manager entered around each attempt
        of a job on the node that runs it (`hooks.Attempt` says how it ended)."""
        self.hooks.around_attempt.append(hook)
        return hook

    def visibility(self, sees: Visibility) -> Visibility:
        """Register `sees(job)`: a job it refuses is, to the current caller, not there
        (404 to every call about it, left out of its lists and key contexts)."""
        self.hooks.visibility.append(sees)
        return sees

    def list_filter(self, narrow: ListFilter) -> ListFilter:
        """Register `narrow(query)`: the job list query narrowed to what the current
        caller may see (the list twin of `visibility`, so a store can use an index)."""
        self.hooks.list_filters.append(narrow)
        return narrow

    def route(
        self, path: str, methods: list[str], *, every_role: bool = False
    ) -> Callable[[Any], Any]:
        """Register the decorated Starlette endpoint at `path` (served by API nodes; by
        every node, worker nodes too, with `every_role`)."""

        def register(endpoint: Any) -> Any:
            routes = self.hooks.node_routes if every_role else self.hooks.routes
            routes.append(Route(path, endpoint, methods=methods))
            return endpoint

        return register

    def document(self, *operations: Operation) -> None:
        """Declare the OpenAPI operations of this plugin's routes (`asyncproc.apidoc`)."""
        self.hooks.openapi_operations.extend(operations)

    def external(self, name: str, *, title: str | None = None, description: str = "") -> JobKind:
        """Register `name` as an external kind (API.md section 14): any JSON content, no
        Python handler; processors outside take its jobs over HTTP."""
        kind = JobKind(
            name,
            _external_handler,
            title=title or f"{name} (external)",
            description=description or "Run by an external processor over HTTP.",
        )
        kind.external = True
        self.add(kind)
        return kind

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
        self.plugins += [name for name in other.plugins if name not in self.plugins]

    def get(self, name: str) -> JobKind:
        """The kind called `name`; raises `UnknownKind`."""
        kind = self._kinds.get(name)
        if kind is None:
            raise UnknownKind(messages.unknown_kind(name, self._kinds))
        return kind

    def __iter__(self) -> Any:
        return iter(sorted(self._kinds.values(), key=lambda k: k.name))

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


async def _external_handler(ctx: Any, content: Any) -> None:
    """Never called: an external kind's jobs are taken by processors outside."""
    raise RuntimeError("an external kind has no handler in this process")


def optional_backend(module: str, setting: str, extra: str | None) -> Any:
    """Import a backend module that needs an optional extra; `ConfigError` naming
    `setting` and the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"; install it with pip install 'asyncproc[{extra}]'" if extra else ""
        raise ConfigError(setting, f"unavailable: {exc}{hint}") from None


BUILTIN_PLUGINS = (
    "asyncproc.plugins.job_content",
    "asyncproc.plugins.callbacks",
    "asyncproc.plugins.schedules",
    "asyncproc.plugins.triggers",
    "asyncproc.plugins.dead_letters",
    "asyncproc.plugins.external",
    "asyncproc.plugins.tracing",
    "asyncproc.plugins.auth",
    "asyncproc.plugins.stats",
    "asyncproc.plugins.metrics",
    "asyncproc.plugins.job_log",
)


_PLUGINS_SETTING = "the plugins setting (ASYNCPROC_PLUGINS, or plugins in the config file)"

# Plugins a setting switches on: loaded (their routes served) only when it is true.
SETTING_PLUGINS = (("mylab", "asyncproc.plugins.mylab"),)


def switched_on(settings: Settings) -> list[str]:
    """The plugin modules that `settings` switch on (`SETTING_PLUGINS`)."""
    return [module for name, module in SETTING_PLUGINS if getattr(settings, name, False)]


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
    modules = list(modules)
    names = list(dict.fromkeys([*builtin, *modules]))
    for ep in entry_points(group=entry_point_group):
        if ep.value not in names:
            names.append(ep.value)
    include_plugins(registry, names, named=modules, entry_point_group=entry_point_group)
    return registry


def include_plugins(
    registry: Registry,
    modules: Iterable[str],
    *,
    named: Iterable[str] | None = None,
    entry_point_group: str = "asyncproc.plugins",
) -> None:
    """Include in `registry` the kinds and hooks of the plugin `modules` it does not
    include yet. `named`: those of them the plugins setting named (when given, a missing
    one of the others is said to come from the entry points)."""
    settings_named = None if named is None else set(named)
    for name in modules:
        if name in registry.plugins:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise PluginError(f"plugin {name}: cannot import: {exc}") from exc
            # The module itself is missing, not something it imports.
            by = (
                _PLUGINS_SETTING
                if settings_named is None or name in settings_named
                else f"the {entry_point_group} entry points"
            )
            raise PluginError(messages.plugin_not_found(name, by)) from None
        except ImportError as exc:
            raise PluginError(f"plugin {name}: cannot import: {exc}") from exc
        plugin = getattr(module, "registry", None)
        if not isinstance(plugin, Registry):
            raise PluginError(f"plugin {name}: no module-level `registry = Registry()`")
        registry.include(plugin)
        registry.plugins.append(name)


def apply_kind_settings(registry: Registry, settings: Settings) -> None:
    """Register `external_kinds`, then apply the `[kinds."<kind>"]` tables to the
    registered kinds; an unknown kind is a `ConfigError`."""
    for name in settings.external_kinds:
        if name in registry:
            if registry.get(name).external:
                continue  # an app built twice from one registry
            raise ConfigError("external_kinds", f"{name} is a kind with a Python handler")
        try:
            registry.external(name)
        except PluginError as exc:
            raise ConfigError("external_kinds", str(exc)) from None
    for name, options in settings.kinds.items():
        if name not in registry:
            raise ConfigError(
                f"kinds.{name}", messages.unknown_kind(name, (k.name for k in registry))
            )
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
