"""Built-in plugin: bearer tokens, scopes and owners (API.md section 15).

With `[[tokens]]` configured, a middleware hook asks every protected call
(`scopes.required_scope`) for `Authorization: Bearer <token>`: none, or one whose
SHA-256 no token declares, answers 401 (`WWW-Authenticate: Bearer`); a token
without the call's scope 403. The caller (`Principal`) is then known for the rest
of the request through a context variable, which the other hooks read:

- before-enqueue: a job started by a call (`api`, `batch`, `event`) is owned by the
  caller's token; jobs a job starts (a selection's items, a compensation) inherit
  its owner in the core; schedules' and message triggers' jobs have none (only
  `admin` sees them);
- visibility and the list filter: a caller without `admin` sees only its own jobs
  (another owner's job is, to it, not there: 404, left out of lists).

Outside a request (the worker, the sweeper, the scheduler) no caller is set and
nothing is hidden. With no tokens, auth is off: the middleware is not installed,
and start-up warns when `host` is not a loopback address.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
from typing import Any

import msgspec
from starlette.middleware import Middleware

from asyncproc.apidoc import Answer, ErrorBody
from asyncproc.config import Settings
from asyncproc.errors import Forbidden, ServiceError, Unauthorized
from asyncproc.hooks import Draft, Node
from asyncproc.interfaces import JobQuery
from asyncproc.model import Job, TriggerType
from asyncproc.registry import Registry
from asyncproc.tokens import Principal, TokenBook, hash_token, new_token

from .scopes import required_scope

__all__ = ["Principal", "TokenBook", "caller", "hash_token", "new_token", "registry"]

log = logging.getLogger("asyncproc.auth")

registry = Registry()

# The caller of the request being served (None: auth is off, or no request).
caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "asyncproc_caller", default=None
)

# How a job was started when the caller's token owns it.
_OWNED_TRIGGERS = frozenset({TriggerType.API, TriggerType.BATCH, TriggerType.EVENT})


def _bearer(scope: dict[str, Any]) -> str | None:
    """The bearer token of the request's `Authorization` header, if any."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


_encode = msgspec.json.encode


async def _refuse(send: Any, error: ServiceError, headers: list[tuple[bytes, bytes]]) -> None:
    body = _encode(error.body())
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: 401/403 for protected calls without the token or scope they
    need; the caller set in `caller` while the call is served."""

    def __init__(self, app: Any, book: TokenBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            # A CORS preflight never carries credentials; the call that follows does.
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        principal = self.book.find(token) if token is not None else None
        if principal is None:
            challenge = b'Bearer realm="asyncproc"'
            if token is not None:
                challenge += b', error="invalid_token"'
            message = (
                "unknown bearer token" if token is not None else "this call needs a bearer token"
            )
            await _refuse(send, Unauthorized(message), [(b"www-authenticate", challenge)])
            return
        if not principal.allows(needed):
            error = Forbidden(f"token {principal.name!r} lacks the scope {needed!r}", scope=needed)
            insufficient = f'Bearer realm="asyncproc", error="insufficient_scope", scope="{needed}"'
            await _refuse(send, error, [(b"www-authenticate", insufficient.encode())])
            return
        reset = caller.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            caller.reset(reset)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@registry.check
def set_up(settings: Settings, app_registry: Registry) -> None:
    """With tokens, add the owner, visibility and list hooks to the app's registry (with
    none they would have nothing to do: an app without auth pays nothing for them).
    Without, warn loudly when the node listens beyond loopback."""
    if settings.tokens:
        hooks = app_registry.hooks
        if own not in hooks.before_enqueue:
            hooks.before_enqueue.append(own)
            hooks.visibility.append(sees)
            hooks.list_filters.append(own_jobs)
        # In the OpenAPI document, of every call but the public ones (`common=False`).
        hooks.openapi_answers[401] = Answer(
            "No bearer token, or an unknown one (`WWW-Authenticate: Bearer`)", ErrorBody
        )
        hooks.openapi_answers[403] = Answer("The token lacks the scope this call needs", ErrorBody)
    elif not _loopback(settings.host):
        log.warning(
            "AUTH IS OFF: no [[tokens]] are configured and host %s is not a loopback "
            "address; anyone who reaches this port may start, read and stop every job",
            settings.host,
        )


@registry.middleware
def bearer_auth(node: Node) -> Middleware | None:
    """The auth middleware when tokens are configured; none when auth is off."""
    tokens = node.settings.tokens
    return Middleware(BearerAuth, book=TokenBook(tokens)) if tokens else None


async def own(draft: Draft) -> None:
    """A job started by a call is owned by the caller's token."""
    principal = caller.get()
    job = draft.job
    if principal is not None and job.owner is None and job.trigger.type in _OWNED_TRIGGERS:
        draft.job = msgspec.structs.replace(job, owner=principal.name)


def sees(job: Job) -> bool:
    """Whether the caller may see `job`: its own, or any with `admin`."""
    principal = caller.get()
    return principal is None or principal.admin or job.owner == principal.name


def own_jobs(query: JobQuery) -> JobQuery:
    """A caller without `admin` lists only its own jobs."""
    principal = caller.get()
    if principal is None or principal.admin:
        return query
    return msgspec.structs.replace(query, owner=principal.name)
