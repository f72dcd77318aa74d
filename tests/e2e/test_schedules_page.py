"""The Schedules view in a real browser against a real server (API.md section 12).

A schedule made through the API shows up with its next run; Pause and Resume
change it for everyone; Run now lands on the started job's page; refused runs
say why; with no schedules the view says how to add one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.e2e.browsing import Browsing

pytestmark = [pytest.mark.browser, pytest.mark.anyio]

# A daily tick far enough away that nothing fires during a test.
NIGHTLY = {
    "kind": "demo.report",
    "content": {"rows": 5, "delay": 0},
    "cron": "0 2 * * *",
    "timezone": "Europe/Budapest",
}


async def put_schedule(browsing: Browsing, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a schedule through the API; the schedule."""
    response = await browsing.api.put(f"/api/schedules/{name}", json=body)
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def schedule_of(browsing: Browsing, name: str) -> dict[str, Any]:
    """The schedule as the API reports it now."""
    response = await browsing.api.get(f"/api/schedules/{name}")
    assert response.status_code == 200, response.text
    schedule: dict[str, Any] = response.json()
    return schedule


async def test_pause_resume_and_run_now(browsing: Browsing, tmp_path: Path) -> None:
    """Listed with kind, cron, zone and next run; Pause -> Paused (in the API too);
    Resume; Run now opens the new job, which says the schedule started it."""
    page = browsing.page
    await put_schedule(browsing, "nightly-report", NIGHTLY)
    await put_schedule(
        browsing, "every-hour", {"kind": "demo.count", "content": {"n": 1}, "every": 3600}
    )

    await page.goto(f"{browsing.base}/")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
    await expect(page).to_have_url(f"{browsing.base}/schedules")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Schedules")
    card = page.get_by_role("article", name="nightly-report")
    await expect(card).to_contain_text("demo.report")
    await expect(card).to_contain_text(re.compile(r"0 2 \* \* \*\s*\(cron, Europe/Budapest\)"))
    next_run = card.locator(".next-run")
    await expect(next_run).to_have_text(re.compile(r"\S.*\(in \d+(\.\d)? (s|min|h|d)\)"))
    await expect(card.get_by_text("Active", exact=True)).to_be_visible()
    await expect(card).to_contain_text("No runs yet.")
    hourly = page.get_by_role("article", name="every-hour")
    await expect(hourly).to_contain_text("every 1 h (UTC)")
    await page.screenshot(path=tmp_path / "schedules-desktop.png", full_page=True)
    await browsing.no_sideways_scroll(390)
    await page.screenshot(path=tmp_path / "schedules-390.png", full_page=True)

    await card.get_by_role("button", name="Pause").click()
    await expect(card.get_by_text("Paused", exact=True)).to_be_visible()
    await expect(next_run).to_contain_text("paused")
    assert (await schedule_of(browsing, "nightly-report"))["paused"] is True
    # The other schedule is untouched.
    await expect(hourly.get_by_text("Active", exact=True)).to_be_visible()
    resume = card.get_by_role("button", name="Resume")
    # Same button, focus kept: a keyboard user can press it again at once.
    await expect(resume).to_be_focused()
    await resume.click()
    await expect(card.get_by_text("Active", exact=True)).to_be_visible()
    assert (await schedule_of(browsing, "nightly-report"))["paused"] is False

    await card.get_by_role("button", name="Run now").click()
    await expect(page).to_have_url(re.compile(r"/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    meta = page.locator(".meta")
    await expect(meta).to_contain_text("Started by schedule nightly-report")
    await expect(meta.get_by_role("link", name="nightly-report")).to_have_attribute(
        "href", re.compile(r"^/schedules")
    )
    status = await browsing.finished(job_id)
    assert status["trigger"] == {"type": "schedule", "name": "nightly-report"}
    await page.screenshot(path=tmp_path / "schedule-job-desktop.png", full_page=True)

    # Back to the schedule: the run is listed and leads to the job.
    await meta.get_by_role("link", name="nightly-report").click()
    await expect(page).to_have_url(re.compile(r"/schedules"))
    card = page.get_by_role("article", name="nightly-report")
    # The link points at this schedule's card.
    await expect(card).to_have_class(re.compile(r"\btarget\b"))
    run = card.locator(".runs li").first
    await expect(run).to_contain_text("created")
    await expect(run.get_by_role("link")).to_have_attribute("href", f"/jobs/{job_id}")
    browsing.assert_no_console_errors()


async def test_refused_runs_say_why(browsing: Browsing, tmp_path: Path) -> None:
    """Ticks refused by the key rule show the reason; Run now's refusal shows in the card."""
    page = browsing.page
    body = {
        "kind": "demo.keyed",
        "content": {"seconds": 60},
        "key": "busy",
        "every": 1,
        "overlap": "allow",
    }
    await put_schedule(browsing, "every-second", body)
    await page.goto(f"{browsing.base}/schedules")
    card = page.get_by_role("article", name="every-second")
    await expect(card).to_contain_text("Key")
    await expect(card).to_contain_text("busy")
    refused = card.locator(".runs li").filter(has_text="refused").first
    await expect(refused).to_contain_text(re.compile(r"key 'busy' is held by job"), timeout=30_000)
    # The job of the first tick holds the key while it runs.
    response = await browsing.api.get("/api/jobs", params={"kind": "demo.keyed", "key": "busy"})
    (holder,) = response.json()["items"]
    assert holder["trigger"] == {"type": "schedule", "name": "every-second"}
    await page.get_by_role("button", name="Pause").click()
    await expect(card.get_by_text("Paused", exact=True)).to_be_visible()

    await card.get_by_role("button", name="Run now").click()
    await expect(card.get_by_role("status")).to_contain_text(
        re.compile(r"Could not start every-second: key 'busy' is held by job")
    )
    await expect(page).to_have_url(f"{browsing.base}/schedules")
    await page.screenshot(path=tmp_path / "schedules-refused.png", full_page=True)
    await browsing.api.post(f"/api/jobs/{holder['id']}/stop")
    browsing.assert_no_console_errors("status of 409")


async def test_no_schedules_says_how_to_add_one(browsing: Browsing) -> None:
    """The empty view names the [[schedules]] table and PUT /api/schedules/{name}."""
    page = browsing.page
    await page.goto(f"{browsing.base}/schedules")
    empty = page.get_by_role("region", name="No schedules yet")
    await expect(empty).to_be_visible()
    await expect(empty).to_contain_text("[[schedules]]")
    await expect(empty).to_contain_text("PUT /api/schedules/{name}")
    await expect(page.get_by_role("article")).to_have_count(0)

    # A schedule added meanwhile appears without a reload.
    await page.evaluate("window.__sameDocument = true")
    await put_schedule(browsing, "nightly-report", NIGHTLY)
    await expect(page.get_by_role("article", name="nightly-report")).to_be_visible()
    await expect(empty).to_be_hidden()
    assert await page.evaluate("window.__sameDocument") is True
    browsing.assert_no_console_errors()
