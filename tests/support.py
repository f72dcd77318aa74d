"""Helpers shared by the tests: a real uvicorn server on a free port, node processes,
deadlines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import pytest
import uvicorn

from asyncproc.corked_http import http_protocol

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
    # Served with the HTTP protocol `asyncproc serve` uses (`asyncproc.corked_http`).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=http_protocol(),
    )
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


ROOT = Path(__file__).resolve().parents[1]


class NodeProcess:
    """One `python app.py --port N [args]` process, its output in `log_dir`."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, name: str = "node", args: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(self.port), *args],
            cwd=ROOT,
            env=dict(env),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def wait_healthy(self, timeout: float = 60) -> None:
        """Return once /health answers 200; fail with the node's log if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                raise AssertionError(f"{self.name} exited with {self.process.returncode}: {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not healthy within {timeout}s")

    async def exited(self, timeout: float) -> int:
        """The exit status once the process has ended (fails past `timeout` seconds)."""
        try:
            return await anyio.to_thread.run_sync(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s") from None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s; idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


TERMINAL = frozenset({"succeeded", "failed", "stopped"})


async def job_status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job's status through `GET /api/jobs/{id}` (asserting 200)."""
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def job_finished(
    client: httpx.AsyncClient, job_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The job's status once it is terminal."""
    return await wait_until(
        lambda: job_status(client, job_id), lambda s: s["state"] in TERMINAL, timeout=timeout
    )


async def post_json(client: httpx.AsyncClient, path: str, body: Any, expect: int) -> Any:
    """POST `body` as JSON, assert the status code, and answer the decoded body (or None)."""
    response = await client.post(path, json=body)
    assert response.status_code == expect, response.text
    return response.json() if response.content else None


def demo_app(*registries: Any, **overrides: Any) -> Any:
    """An app on the memory backends with the demo kinds plus `registries`' kinds, a
    fast sweep, and a 0.2 s shutdown grace (an app left with jobs running ends at once).
    `overrides` are settings."""
    from asyncproc.config import load_settings
    from asyncproc.registry import load_plugins
    from asyncproc.server import create_app

    registry = load_plugins(["asyncproc.plugins.demo"])
    for extra in registries:
        registry.include(extra)
    settings = load_settings(
        environ={}, **{"sweep_interval": 0.05, "shutdown_grace": 0.2, **overrides}
    )
    return create_app(settings, registry=registry)
