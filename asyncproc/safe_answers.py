"""The headers that keep every answer safe in a browser (API.md section 16).

Every answer carries `X-Content-Type-Options: nosniff` (a browser never guesses a
type we did not send), `Cross-Origin-Resource-Policy: same-origin` (another site
cannot embed our answers as images or scripts) and `Referrer-Policy: same-origin`
(job ids in the page's URLs never leak to other sites). Answers other than the
page's static files get `Cache-Control: no-store` unless they chose their own.

A result a browser would run as a document (HTML, SVG, XML...) is an attachment and
runs under a sandbox CSP, so a job's output never executes as this origin. The rule
is general: an answer of such a type that does not name its own
`Content-Security-Policy` (the page names one: `PAGE_CSP`) is treated as a result.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from starlette.applications import Starlette

__all__ = [
    "PAGE_CSP",
    "RESULT_CSP",
    "SafeAnswers",
    "SafeStarlette",
    "attachment",
    "is_active_content",
]

# The page: its own scripts, styles and fetches only; no inline script or style, no
# plugins, no framing. `data:` images for the favicon inlined in index.html.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# An active result opened anyway (a browser that ignores `attachment`): nothing runs,
# nothing loads, it gets an opaque origin.
RESULT_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"

# Types a browser renders as a document with scripts (besides any `.../xml` and
# `...+xml`: SVG, XHTML, MathML, RDF, XSLT...).
_ACTIVE_TYPES = frozenset({"text/html", "text/xsl", "multipart/x-mixed-replace"})
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")

_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"referrer-policy", b"same-origin"),
]
_NO_STORE = (b"cache-control", b"no-store")
_RESULT_CSP = (b"content-security-policy", RESULT_CSP.encode())
_ATTACHMENT = (b"content-disposition", b"attachment")


def is_active_content(mime: str | None) -> bool:
    """True when a browser would render `mime` as a document that may run scripts.

    A type that does not parse as `type/subtype` counts as active: what a browser makes
    of it is anybody's guess.
    """
    base = (mime or "").split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE.fullmatch(base):
        return True
    return base in _ACTIVE_TYPES or base.endswith(("+xml", "/xml"))


@functools.lru_cache(maxsize=256)
def _is_active(content_type: bytes) -> bool:
    """`is_active_content` of a raw header value; an answer's type is nearly always one
    of a few, so the answer is remembered."""
    return is_active_content(content_type.decode("latin-1"))


def attachment(filename: str) -> str:
    """A `Content-Disposition` value that downloads as `filename` (a plain ASCII name)."""
    return f'attachment; filename="{filename}"'


class SafeAnswers:
    """ASGI middleware adding the headers of the module docstring to every HTTP answer.

    `static` is the path prefix of the page's files, which may be cached.
    """

    def __init__(self, app: Any, static: str = "/static/") -> None:
        self.app = app
        self.static = static

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith(self.static)

        async def send_safely(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = safe_headers(message.get("headers", ()), cacheable)
            await send(message)

        await self.app(scope, receive, send_safely)


def safe_headers(raw: Any, cacheable: bool) -> list[tuple[bytes, bytes]]:
    """`raw` (ASGI response headers) with the safety headers added where missing."""
    headers = list(raw)
    content_type: bytes | None = None
    has: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        has.add(lower)
        if lower == b"content-type":
            content_type = value
    headers += [item for item in _ALWAYS if item[0] not in has]
    if not cacheable and b"cache-control" not in has:
        headers.append(_NO_STORE)
    if (
        content_type is not None
        and b"content-security-policy" not in has
        and _is_active(content_type)
    ):
        headers.append(_RESULT_CSP)
        if b"content-disposition" not in has:
            headers.append(_ATTACHMENT)
    return headers


class SafeStarlette(Starlette):
    """A Starlette app whose every answer passes through `SafeAnswers`: outside even
    Starlette's ServerErrorMiddleware, so a 500 carries the headers too."""

    def build_middleware_stack(self) -> Any:
        """Starlette's stack, inside `SafeAnswers`."""
        return SafeAnswers(super().build_middleware_stack())
