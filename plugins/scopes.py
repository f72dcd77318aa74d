"""Which scope each call needs (API.md section 15): the one table of it.

A route added later gets its scope by adding a line to `RULES`; a path under a
protected prefix that no line names needs `admin` (deny by default). Paths under
no protected prefix (`/health`, `/`, the page's routes and static files,
`/openapi.json`) are public.
"""

from __future__ import annotations

import re

__all__ = ["ADMIN", "PROTECTED", "READ", "RULES", "STOP", "SUBMIT", "required_scope"]

SUBMIT, READ, STOP, ADMIN = "submit", "read", "stop", "admin"

# What needs a token at all. `/openapi.json` does not: it documents the calls and holds
# no job, and tools (code generators, API browsers) fetch it before they have a token.
PROTECTED = ("/api/", "/metrics", "/requests", "/v2/requests")

_SEGMENT = r"[^/]+"
_MYLAB = r"(?:/v2)?/requests"

# (methods, path pattern, scope), first match wins. The per-kind calls come last, after
# the fixed paths whose second segment could also be read as a kind name.
RULES: tuple[tuple[frozenset[str], str, str], ...] = (
    # Jobs, through the resource aliases (API.md section 2).
    (frozenset({"GET"}), r"/api/jobs", READ),
    (frozenset({"GET"}), rf"/api/jobs/{_SEGMENT}", READ),
    (frozenset({"GET"}), rf"/api/jobs/{_SEGMENT}/(?:result|events|content)", READ),
    (frozenset({"POST"}), rf"/api/jobs/{_SEGMENT}/stop", STOP),
    (frozenset({"GET"}), r"/api/kinds", READ),
    (frozenset({"GET"}), r"/api/keys/.+", READ),
    (frozenset({"GET"}), r"/api/stats", READ),
    # Schedules and triggers (12): reading is `read`, changing is `admin`.
    (frozenset({"GET"}), r"/api/schedules", READ),
    (frozenset({"GET"}), rf"/api/schedules/{_SEGMENT}", READ),
    (frozenset({"PUT", "DELETE"}), rf"/api/schedules/{_SEGMENT}", ADMIN),
    (frozenset({"POST"}), rf"/api/schedules/{_SEGMENT}/(?:pause|resume|trigger)", ADMIN),
    (frozenset({"GET"}), r"/api/triggers", READ),
    (frozenset({"POST"}), r"/api/events/.+", SUBMIT),
    # Operators only (13, 14, 16).
    (frozenset({"GET", "POST", "DELETE"}), r"/api/dead-letters(?:/.*)?", ADMIN),
    (frozenset({"GET", "POST", "PUT"}), r"/api/workers/.*", ADMIN),
    (frozenset({"GET"}), r"/metrics", ADMIN),
    # MyLab.AsyncProcessor's API v2 (14): clients submit and read; processor calls are
    # external processors' (admin).
    (frozenset({"POST"}), _MYLAB, SUBMIT),
    (frozenset({"GET"}), rf"{_MYLAB}/{_SEGMENT}(?:/status|/result)?", READ),
    (frozenset({"PUT", "POST"}), rf"{_MYLAB}/{_SEGMENT}/(?:status/.+|result)", ADMIN),
    # The four calls of each kind, and batch and release (1, 6, 10).
    (frozenset({"POST"}), rf"/api/{_SEGMENT}/enqueue(?:-batch)?", SUBMIT),
    (frozenset({"POST"}), rf"/api/{_SEGMENT}/(?:progress|result)", READ),
    (frozenset({"POST"}), rf"/api/{_SEGMENT}/(?:stop|release)", STOP),
)

_COMPILED = tuple((methods, re.compile(pattern), scope) for methods, pattern, scope in RULES)


def required_scope(method: str, path: str) -> str | None:
    """The scope a call needs: None for a public path, `admin` for a protected path that
    no rule names (or a method no rule allows there)."""
    if not path.startswith(PROTECTED):
        return None
    if method == "HEAD":
        method = "GET"
    for methods, pattern, scope in _COMPILED:
        if method in methods and pattern.fullmatch(path):
            return scope
    return ADMIN
