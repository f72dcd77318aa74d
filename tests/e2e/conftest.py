"""Fixtures of the browser tests: one headless chromium per module, and per test a
fresh in-memory app served on loopback with a new page pointed at it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, async_playwright

from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.e2e.browsing import CHROMIUM, CHROMIUM_ARGS, LONG, Browsing
from tests.support import IN_CI, live_server


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so one chromium serves every test of the module."""
    return "asyncio"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; skip without it, except in CI where it must be there."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(anyio_backend: str, chromium: str) -> AsyncIterator[Browser]:
    """One headless chromium for the module; each test gets its own context."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browsing(browser: Browser) -> AsyncIterator[Browsing]:
    """A fresh in-memory app served on loopback and a new browser page pointed at it."""
    app = create_app(load_settings(environ={}, shutdown_grace=0.2))
    async with live_server(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as api:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = await context.new_page()
            page.set_default_timeout(LONG)
            browsing = Browsing(page=page, base=base, api=api)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    browsing.errors.append(f"{message.text} ({message.location.get('url')})")

            page.on("console", on_console)
            page.on("pageerror", lambda error: browsing.errors.append(f"uncaught: {error}"))
            yield browsing
        finally:
            # Closed before the server stops, so no open stream delays its exit.
            await context.close()
