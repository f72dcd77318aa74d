"""API tokens (API.md section 15): how a token's `hash` is made, and the book that finds
a presented token's principal in constant time. The core keeps these rules (the
config checks hashes, the CLI makes tokens); the auth plugin enforces them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TokenSettings

__all__ = ["ADMIN", "Principal", "TokenBook", "hash_token", "new_token"]

ADMIN = "admin"


class Principal:
    """A known token: its name (the owner of the jobs it starts) and its scopes."""

    __slots__ = ("admin", "name", "scopes")

    def __init__(self, name: str, scopes: frozenset[str]) -> None:
        self.name = name
        self.scopes = scopes
        self.admin = ADMIN in scopes

    def allows(self, scope: str) -> bool:
        """Whether this token may make a call that needs `scope` (`admin` may all)."""
        return self.admin or scope in self.scopes


def hash_token(token: str) -> str:
    """The `hash` of a token as `[[tokens]]` holds it: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A new random token (256 bits, URL-safe) and its `hash`."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


class TokenBook:
    """The configured tokens, looked up in constant time: the presented token's SHA-256
    is compared with every configured digest by `hmac.compare_digest`, all of them, so
    neither the comparison nor which token matched shows in the time taken."""

    def __init__(self, tokens: tuple[TokenSettings, ...]) -> None:
        self._entries = [
            (
                bytes.fromhex(token.hash.removeprefix("sha256:")),
                Principal(token.name, frozenset(token.scopes)),
            )
            for token in tokens
        ]

    def find(self, token: str) -> Principal | None:
        """The principal of `token`, or None when no configured hash is its SHA-256."""
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for configured, principal in self._entries:
            if hmac.compare_digest(digest, configured):
                found = principal
        return found
