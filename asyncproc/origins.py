"""Which browser pages may call the API (API.md section 16): this server's own page,
and the origins listed in `cors_origins`.

A request from a page of another origin that would change anything (any method but
GET, HEAD and OPTIONS) answers 403 before routing: a foreign site cannot enqueue or
stop jobs through a visitor's browser, whatever body or `Content-Type` it sends.
Browsers name the page in `Origin` on every such request; a request without one
(curl, a script, the CLI) is not a browser's cross-site request, unless the browser
says so in `Sec-Fetch-Site`. Reads are left alone: without CORS headers another
site cannot see their answers, and tokens live in the page's session, not in cookies.

The origins of `cors_origins` get what a browser needs to call the API from their
pages: the preflight answered, `Access-Control-Allow-Origin` on the answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.responses import Response

from .errors import CrossOriginRefused

__all__ = ["Origins", "normalize_origin"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE"
# What the API's clients send besides the CORS-safelisted headers (the token, JSON
# bodies, an SSE resume point, trace context); a preflight may ask for more.
ALLOWED_HEADERS = ("authorization", "content-type", "last-event-id", "traceparent", "tracestate")
# What a page may read of an answer besides the CORS-safelisted headers.
EXPOSED_HEADERS = b"Location, Retry-After, Content-Disposition, WWW-Authenticate"
MAX_AGE = b"600"


def normalize_origin(value: str) -> str:
    """`value` as a browser writes it in `Origin`: `scheme://host[:port]`, lower case,
    the scheme's default port left out. Raises ValueError for anything else."""
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{value!r}: expected http://host[:port] or https://host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number from 0 to 65535") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError(f"{value!r}: expected http://host[:port] or https://host[:port]")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an origin has no path, query or fragment")
    host = parts.hostname
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def is_own_origin(origin: str, host: str | None) -> bool:
    """True when the page at `origin` was served by the server the request's `Host`
    names (same host and port; a `Host` without port means the origin scheme's default).

    The scheme is not compared: behind a proxy that ends TLS, the server sees `http`
    while the page is `https`, and no one else can serve a page at our host and port.
    """
    if host is None:
        return False
    # What nearly every browser request of our own page looks like: no parsing needed.
    if origin.endswith(host) and origin[: -len(host)] in ("http://", "https://"):
        return True
    try:
        own = urlsplit(origin)
        scheme = own.scheme
        if scheme not in DEFAULT_PORTS or not own.hostname:
            return False
        served = urlsplit(f"//{host}")
        default = DEFAULT_PORTS[scheme]
        return (own.hostname, own.port or default) == (served.hostname, served.port or default)
    except ValueError:  # a port that is not a number: not ours
        return False


class Origins:
    """ASGI middleware: refuses changes asked by foreign pages with 403 and serves CORS
    to the `allowed` origins (`cors_origins`)."""

    def __init__(self, app: Any, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(normalize_origin(origin) for origin in allowed)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: str | None = None
        host: str | None = None
        fetch_site: bytes | None = None
        preflight: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"sec-fetch-site":
                fetch_site = value
            elif name == b"access-control-request-method":
                preflight = value
        changes = scope["method"] not in SAFE_METHODS
        if origin is None:
            if changes and fetch_site in (b"cross-site", b"same-site"):
                await self._refuse(scope, receive, send, "a page of another site")
                return
            await self._pass(scope, receive, send, None)
            return
        if is_own_origin(origin, host):
            await self._pass(scope, receive, send, None)
            return
        allowed = self._allowed(origin)
        if scope["method"] == "OPTIONS" and preflight is not None:
            if allowed is None:
                await self._refuse(scope, receive, send, f"a page of {origin}")
            else:
                await self._preflight(scope, receive, send, allowed)
            return
        if changes and allowed is None:
            await self._refuse(scope, receive, send, f"a page of {origin}")
            return
        await self._pass(scope, receive, send, allowed)

    def _allowed(self, origin: str) -> str | None:
        """`origin` as it came when it is listed in `cors_origins`, else None."""
        if not self.allowed:
            return None
        try:
            return origin if normalize_origin(origin) in self.allowed else None
        except ValueError:
            return None

    async def _pass(self, scope: Any, receive: Any, send: Any, allowed: str | None) -> None:
        """Serve the request; with `cors_origins`, every answer varies by `Origin`, and
        an allowed origin's answer names it."""
        if not self.allowed:
            await self.app(scope, receive, send)
            return
        extra = [(b"vary", b"Origin")]
        if allowed is not None:
            extra += [
                (b"access-control-allow-origin", allowed.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
            ]

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Any, receive: Any, send: Any, allowed: str) -> None:
        asked = b""
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                asked = value
        names = list(ALLOWED_HEADERS)
        for name in asked.decode("latin-1").split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
        headers = [
            (b"access-control-allow-origin", allowed.encode("latin-1")),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", ", ".join(names).encode("latin-1")),
            (b"access-control-max-age", MAX_AGE),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope: Any, receive: Any, send: Any, who: str) -> None:
        error = CrossOriginRefused(
            f"{who} may not change anything here (add its origin to cors_origins to allow it)"
        )
        extra = {"Vary": "Origin"} if self.allowed else None
        body = msgspec.json.encode(error.body())
        response = Response(body, error.status_code, extra, media_type="application/json")
        await response(scope, receive, send)
