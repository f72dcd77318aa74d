"""Helpers shared by the tests: a real uvicorn server on a free port, deadlines."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import uvicorn

T = TypeVar("T")

IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_url(env_name: str, default: str) -> str:
    """The URL of a real server for a test: from `env_name`, else `default` if it answers.

    Skips with a reason when unreachable, but fails when `CI` is set.
    """
    url = os.environ.get(env_name) or default
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            pass
    except OSError as exc:
        message = f"{url} unreachable ({exc}); set {env_name} or start the server"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return url


async def wait_until(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, timeout: float = 10.0
) -> T:
    """Call `probe` until `check(value)` holds; fail the test past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)


@asynccontextmanager
async def live_server(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@asynccontextmanager
async def api_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to `app` served by a real uvicorn on loopback."""
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
    ):
        yield client
