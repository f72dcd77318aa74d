"""The page with auth on, in headless chromium: it asks for the token once (a form, a
wrong token asked again), keeps it for the session, sends it on every call (never in
a URL), and the job view's live progress keeps working (the event stream read with
fetch and the header)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Request, expect

from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.e2e.browsing import LONG, Browsing
from tests.support import live_server, wait_until
from tests.test_auth import SECRETS, TOKENS, bearer

pytestmark = [pytest.mark.browser, pytest.mark.anyio]


@pytest.fixture
async def browsing(browser: Browser) -> AsyncIterator[Browsing]:
    """An in-memory app with tokens, a page pointed at it, an API client as alice."""
    app = create_app(load_settings(environ={}, shutdown_grace=0.2, tokens=TOKENS))
    async with (
        live_server(app) as base,
        httpx.AsyncClient(base_url=base, timeout=30, headers=bearer("alice")) as api,
    ):
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = await context.new_page()
            page.set_default_timeout(LONG)
            browsing = Browsing(page=page, base=base, api=api)

            def on_console(message: ConsoleMessage) -> None:
                # The first calls are refused with 401 before the token is given: expected.
                if message.type == "error" and "status of 401" not in message.text:
                    browsing.errors.append(f"{message.text} ({message.location.get('url')})")

            page.on("console", on_console)
            page.on("pageerror", lambda error: browsing.errors.append(f"uncaught: {error}"))
            yield browsing
        finally:
            await context.close()


async def test_the_page_asks_once_for_the_token_and_shows_live_progress(
    browsing: Browsing, tmp_path: Path
) -> None:
    page = browsing.page
    sent: list[Request] = []
    page.on("request", lambda request: sent.append(request))
    job_id = await browsing.enqueue("demo.count", {"n": 60, "delay": 0.1})
    await page.goto(f"{browsing.base}/jobs/{job_id}")

    dialog = page.get_by_role("dialog", name="API token needed")
    await expect(dialog).to_be_visible()
    await page.screenshot(path=tmp_path / "token-form.png")
    await dialog.get_by_label("Token").fill("not-a-token")
    await dialog.get_by_role("button", name="Use token").click()
    # Refused: asked again, saying so.
    await expect(dialog.get_by_role("alert")).to_have_text(re.compile("not accepted"))
    await dialog.get_by_label("Token").fill(SECRETS["alice"])
    await dialog.get_by_role("button", name="Use token").click()
    await expect(dialog).to_be_hidden()

    bar = page.get_by_role("progressbar", name="Job progress")
    await expect(bar).to_have_attribute("aria-valuenow", re.compile(r"\d"))

    async def value() -> float:
        raw = await bar.get_attribute("aria-valuenow")
        return float(raw or 0)

    first = await value()
    await wait_until(value, lambda v: v > first, timeout=20)
    await expect(page.get_by_text("counting", exact=True)).to_be_visible()
    await page.screenshot(path=tmp_path / "job-live-with-token.png", full_page=True)

    # The live view read the event stream with the token in a header.
    streams = [r for r in sent if r.url.endswith(f"/api/jobs/{job_id}/events")]
    assert streams
    assert (await streams[-1].all_headers()).get("authorization") == f"Bearer {SECRETS['alice']}"
    assert not [r.url for r in sent if "wait=" in r.url]  # no fallback to long poll
    # Kept for the session: another view asks nothing and lists alice's job.
    await page.goto(f"{browsing.base}/")
    await expect(page.get_by_role("link", name=re.compile(job_id[:8]))).to_be_visible()
    assert await page.get_by_role("dialog").count() == 0
    assert await page.evaluate("sessionStorage.getItem('asyncproc.token')") == SECRETS["alice"]
    await page.screenshot(path=tmp_path / "list-with-token.png", full_page=True)
    assert not [r.url for r in sent if SECRETS["alice"] in r.url or "not-a-token" in r.url]
    api_calls = [r for r in sent if "/api/" in r.url]
    refused = [r for r in api_calls if "authorization" not in await r.all_headers()]
    # Only the calls made before the token was given went without it.
    assert api_calls[-1] not in refused
    assert browsing.errors == []
