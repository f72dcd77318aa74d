"""Job kinds: the `Registry` and its `job` decorator, and plugin loading.

A plugin is a plain module with a module-level `registry = Registry()` whose
`@registry.job(...)` handlers it defines; the app includes each plugin's
registry into its own. Installed packages can name such modules in the
`asyncproc.plugins` entry-point group.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import msgspec

from .errors import InvalidInput, PluginError, UnknownKind
from .model import Uniqueness

__all__ = ["Handler", "JobKind", "Registry", "load_plugins"]

KIND_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

Handler = Callable[[Any, Any], Awaitable[Any]] | Callable[[Any, Any], Any]
Check = Callable[[Any], None]


class JobKind:
    """A registered job kind: its handler, content type and options."""

    __slots__ = (
        "check",
        "content_type",
        "decoder",
        "description",
        "handler",
        "is_async",
        "name",
        "processing_timeout",
        "retention",
        "retries",
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
        check: Check | None = None,
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
        self.check = check

    def decode_content(self, raw: bytes) -> Any:
        """The typed content; raises `InvalidInput` naming what is wrong."""
        try:
            content = self.decoder.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidInput(_content_message(str(exc))) from None
        if self.check is not None:
            try:
                self.check(content)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"content: {exc}") from None
        return content

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of the content."""
        return msgspec.json.schema(self.content_type)


def _content_message(text: str) -> str:
    # msgspec says "... - at `$.n`"; the client sent it under `content`.
    return "content: " + text.replace("`$", "`$.content", 1)


class Registry:
    """A set of job kinds; plugins fill one, the app includes them in its own."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

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
        unique: Uniqueness | str = Uniqueness.NONE,
        check: Check | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of `kind`.

        `content` is the msgspec type the JSON content is validated into;
        `processing_timeout` and `retention` (seconds) override the settings;
        `retries` is how many more attempts a `RetryableJobError` gets; `unique`
        is the key rule (`none`, `active`, `once`); `check(content)` is a pre-start
        validation whose ValueError becomes a 422.
        """

        def register(handler: Handler) -> Handler:
            self.add(
                JobKind(
                    kind,
                    handler,
                    content=content,
                    title=title,
                    description=description,
                    processing_timeout=processing_timeout,
                    retention=retention,
                    retries=retries,
                    unique=unique,
                    check=check,
                )
            )
            return handler

        return register

    def add(self, kind: JobKind) -> None:
        """Register a kind; a name registered twice is an error."""
        if kind.name in self._kinds:
            raise PluginError(f"kind {kind.name} is registered twice")
        self._kinds[kind.name] = kind

    def include(self, other: Registry) -> None:
        """Register every kind of `other`."""
        for kind in other:
            self.add(kind)

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


def load_plugins(
    modules: Iterable[str], *, entry_point_group: str = "asyncproc.plugins"
) -> Registry:
    """A registry with the kinds of `modules` and of installed entry-point plugins."""
    registry = Registry()
    names = list(dict.fromkeys(modules))
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
