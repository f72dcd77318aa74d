"""The Dead letters view in a real browser against a real server (API.md section 13).

A job lost too often and a refused trigger message are listed with their reason,
time, job link or trigger name and folded payload; Requeue runs the job again and
Delete forgets the message, until the view says there are none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, expect

from asyncproc.config import load_settings
from asyncproc.plugins.dead_letter_book import DeadLetterBook
from asyncproc.server import create_app
from tests.e2e.browsing import LONG, Browsing
from tests.support import job_finished, live_server, wait_until
from tests.test_dead_letters import kinds, lose_job

pytestmark = [pytest.mark.browser, pytest.mark.anyio]


@pytest.fixture
async def dead(browser: Browser) -> AsyncIterator[Browsing]:
    """A node with a job lost too often and a refused trigger message; a page on it."""
    app = create_app(load_settings(environ={}, max_deliveries=1), registry=kinds)
    async with live_server(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as api:
        service = app.state.service
        await lose_job(service)
        await DeadLetterBook(service.store).record_message(
            "orders",
            b'{"orderId": "42", "hold": {"seconds": 0}}',
            "refused (key_conflict): key '42' is held by job 7f3c",
            message_id="m-2",
        )
        await wait_until(
            lambda: api.get("/api/dead-letters"), lambda r: len(r.json()["items"]) == 2
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            page = await context.new_page()
            page.set_default_timeout(LONG)
            browsing = Browsing(page=page, base=base, api=api)
            page.on("pageerror", lambda error: browsing.errors.append(f"uncaught: {error}"))
            page.on(
                "console",
                lambda m: browsing.errors.append(m.text) if m.type == "error" else None,
            )
            yield browsing
        finally:
            await context.close()


async def test_dead_letters_are_listed_requeued_and_deleted(dead: Browsing, tmp_path: Path) -> None:
    page = dead.page
    letters = (await dead.api.get("/api/dead-letters")).json()["items"]
    job_letter = next(letter for letter in letters if letter["source"] == "job")
    message_letter = next(letter for letter in letters if letter["source"] == "trigger")

    await page.goto(f"{dead.base}/")
    nav = page.get_by_role("navigation", name="Main")
    await nav.get_by_role("link", name="Dead letters").click()
    await expect(page).to_have_url(f"{dead.base}/dead-letters")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Dead letters")
    await expect(nav.get_by_role("link", name="Dead letters")).to_have_attribute(
        "aria-current", "page"
    )

    job_card = page.locator(f"#letter-{job_letter['id']}")
    message_card = page.locator(f"#letter-{message_letter['id']}")
    await expect(job_card).to_contain_text("dead_letter")
    await expect(job_card.get_by_role("link", name=job_letter["jobId"])).to_have_attribute(
        "href", f"/jobs/{job_letter['jobId']}"
    )
    await expect(message_card.get_by_role("heading")).to_have_text("Message for orders")
    await expect(message_card).to_contain_text("key_conflict")
    await expect(message_card.locator("time")).to_have_attribute("datetime", message_letter["at"])
    # The payload is folded until asked for.
    payload = message_card.locator("pre")
    await expect(payload).to_be_hidden()
    await message_card.get_by_text("Payload").click()
    await expect(payload).to_be_visible()
    await expect(payload).to_contain_text('"orderId": "42"')
    await page.screenshot(path=str(tmp_path / "dead-letters.png"), full_page=True)
    await dead.no_sideways_scroll(390)
    await page.set_viewport_size({"width": 1280, "height": 900})

    await job_card.get_by_role("button", name="Requeue").click()
    await expect(job_card).to_have_count(0)
    status = page.get_by_role("status").filter(has_text="Requeued")
    await expect(status.get_by_role("link")).to_have_attribute(
        "href", f"/jobs/{job_letter['jobId']}"
    )
    done = await job_finished(dead.api, job_letter["jobId"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)

    await message_card.get_by_role("button", name="Delete").click()
    await expect(message_card).to_have_count(0)
    await expect(page.get_by_role("heading", name="No dead letters")).to_be_visible()
    assert (await dead.api.get("/api/dead-letters")).json()["items"] == []
    # Reloaded, the view still shows none (nothing came back).
    await page.reload()
    await expect(page.get_by_role("heading", name="No dead letters")).to_be_visible()
    dead.assert_no_console_errors()
