"""The page under its Content-Security-Policy (API.md section 16) in real chromium: every
view works with no policy violation, and an HTML result is shown as text, never run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Dialog, expect

from tests.e2e.browsing import Browsing
from tests.support import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.anyio]

# Collects the page's CSP violations (chromium also logs them as console errors).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""
# How much of the job view's bar its fill covers: the width bar.js sets through CSSOM,
# which the policy allows (style attributes it would not).
FILL_RATIO = """(() => {
  const bar = document.querySelector('[role="progressbar"][aria-label="Job progress"]');
  const fill = bar.querySelector(".bar-fill");
  return fill.getBoundingClientRect().width / bar.getBoundingClientRect().width;
})()"""
HTML = '<h1 id="injected">Quarterly report</h1><script>alert("ran")</script>'


def shots_dir(tmp_path: Path) -> Path:
    """Where screenshots go: `ASYNCPROC_TEST_SHOTS` when set (to look at them), else tmp."""
    chosen = os.environ.get("ASYNCPROC_TEST_SHOTS")
    path = Path(chosen) if chosen else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


async def test_every_view_works_under_the_policy(browsing: Browsing, tmp_path: Path) -> None:
    page = browsing.page
    shots = shots_dir(tmp_path)
    await page.add_init_script(WATCH_VIOLATIONS)
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    job_id = await browsing.enqueue("demo.page", {"html": HTML})
    await browsing.finished(job_id)

    response = await page.goto(f"{browsing.base}/")
    assert response is not None
    assert "default-src 'self'" in response.headers["content-security-policy"]
    await expect(page.get_by_role("link", name=re.compile("demo.page"))).to_be_visible()
    await page.screenshot(path=shots / "csp-list.png", full_page=True)

    await page.goto(f"{browsing.base}/new")
    await page.get_by_label("Kind").select_option("demo.count")
    await page.get_by_label("Content (JSON)").fill('{"n": 3, "delay": 0.05}')
    await page.get_by_role("button", name="Start job").click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    await expect(page.get_by_role("status").filter(has_text="State:")).to_have_text(
        re.compile(r"State:\s*succeeded")
    )
    await wait_until(lambda: page.evaluate(FILL_RATIO), lambda ratio: ratio > 0.95)
    await page.screenshot(path=shots / "csp-count.png", full_page=True)

    # The HTML result: its source shown as text in the job view, nothing of it run.
    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(page.get_by_text('<script>alert("ran")</script>', exact=False)).to_be_visible()
    assert await page.locator("#injected").count() == 0
    await page.screenshot(path=shots / "csp-html-result.png", full_page=True)

    for path in ["/schedules", "/dead-letters"]:
        await page.goto(f"{browsing.base}{path}")
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
    await page.screenshot(path=shots / "csp-dead-letters.png", full_page=True)

    assert await page.evaluate("window.__violations") == []
    assert dialogs == []
    browsing.assert_no_console_errors()


async def test_an_html_result_opened_directly_runs_nothing(browsing: Browsing) -> None:
    """Opening the result's URL downloads it; the page's origin never renders it."""
    page = browsing.page
    job_id = await browsing.enqueue("demo.page", {"html": HTML})
    await browsing.finished(job_id)
    await page.goto(f"{browsing.base}/")
    async with page.expect_download() as downloading:
        await page.evaluate(f"window.location.href = '/api/jobs/{job_id}/result'")
    download = await downloading.value
    assert download.suggested_filename == f"{job_id}.html"
    assert await page.locator("#injected").count() == 0
