"""The limits on what a request may bring (API.md section 16), as cheap pure checks.

Bad input never costs a 500 or unbounded memory: headers over 64 KiB in all are
refused before routing, a JSON body must say it is JSON, JSON nested deeper than
64 levels is refused before the decoder recurses into it, and the headers kept
for a handler leave credentials out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import accumulate

__all__ = [
    "ALWAYS_HIDDEN_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "headers_size",
    "hidden_header_names",
    "is_json_media_type",
    "json_too_deep",
    "kept_headers",
]

MAX_JSON_DEPTH = 64
MAX_HEADER_BYTES = 64 * 1024
ALWAYS_HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})

# A JSON string, escapes included. An unterminated one runs to the end of the body:
# were it to fail instead, the search would retry at each later quote (quadratic on
# `"\"\"\"...`). Matched greedily at the first try, so linear.
_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.DOTALL)
# What `bytes.translate` deletes to keep only the brackets.
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# +1 for an opening bracket, -1 for a closing one (indexed by byte value).
_STEP = [0] * 256
for _byte in b"[{":
    _STEP[_byte] = 1
for _byte in b"]}":
    _STEP[_byte] = -1


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `body` opens more than `limit` arrays/objects inside one another.

    The outermost value counts as level 1. Brackets inside strings do not count.
    Meant to run before decoding: msgspec recurses per level and ~1,000 levels
    raise RecursionError. Linear, in C but for a final `max`.
    """
    # Most bodies hold fewer brackets than the limit: two counts and done.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return False
    return max(accumulate(map(_STEP.__getitem__, brackets))) > limit


def is_json_media_type(value: bytes) -> bool:
    """True for `application/json`, with or without a UTF-8 charset parameter."""
    if value == b"application/json":  # what nearly every client sends
        return True
    media_type, _, parameters = value.partition(b";")
    if media_type.strip().lower() != b"application/json":
        return False
    for parameter in parameters.split(b";"):
        name, _, given = parameter.partition(b"=")
        name = name.strip().lower()
        if not name:
            continue
        # JSON is UTF-8 (RFC 8259); another charset would be decoded wrongly.
        if name != b"charset" or given.strip().strip(b'"').lower() not in {b"utf-8", b"utf8"}:
            return False
    return True


def headers_size(raw: Iterable[tuple[bytes, bytes]]) -> int:
    """The bytes of every header name and value of an ASGI scope's `headers`."""
    size = 0
    for name, value in raw:  # a plain loop: faster than sum/map/chain for a few headers
        size += len(name) + len(value)
    return size


@lru_cache(maxsize=8)
def hidden_header_names(configured: tuple[str, ...]) -> frozenset[str]:
    """The lower-case names never kept for a handler: the credentials and `configured`."""
    return ALWAYS_HIDDEN_HEADERS | {name.lower() for name in configured}


def kept_headers(raw: Iterable[tuple[bytes, bytes]], hidden: frozenset[str]) -> dict[str, str]:
    """An ASGI scope's headers (names are lower case there) minus the `hidden` ones."""
    headers: dict[str, str] = {}
    for name, value in raw:
        text = name.decode("latin-1")
        if text not in hidden:
            headers[text] = value.decode("latin-1")
    return headers
