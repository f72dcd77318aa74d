"""A job's details on its page and in the list, and the New job form's opening
content, in headless chromium against a real server (memory backends)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from tests.e2e.browsing import Browsing
from tests.support import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.anyio]

SHOTS = Path("/tmp/page-shots")
YEAR = str(datetime.now().year)
DURATION = re.compile(r"^\d+ ms$|^\d+(\.\d)? s$|^\d+ min \d\d s$")


def meta(page: Page, term: str) -> Locator:
    """The value beside `term` in the job page's details list."""
    return page.locator(f"dl.meta dt:text-is('{term}') + dd")


def shot(name: str) -> Path:
    """Where a screenshot goes (kept for a person to look at)."""
    SHOTS.mkdir(exist_ok=True)
    return SHOTS / name


async def test_finished_job_page_shows_input_times_duration_attempt(browsing: Browsing) -> None:
    """A finished job: its input as pretty JSON, created/started/finished with their
    date, the duration, the attempt (2 after a retry), and no Stop button."""
    page = browsing.page
    job_id = await browsing.enqueue("demo.flaky", {"failures": 1})
    final = await browsing.finished(job_id)
    assert (final["state"], final["attempt"]) == ("succeeded", 2)

    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(page.get_by_role("status").filter(has_text="State:")).to_contain_text("succeeded")
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    await expect(page.locator("button.stop")).to_be_hidden()
    for term in ("Created", "Started", "Finished"):
        await expect(meta(page, term)).to_contain_text(YEAR)
    started = await meta(page, "Started").locator("time").get_attribute("datetime")
    assert started == final["startedAt"]
    await expect(meta(page, "Duration")).to_have_text(DURATION)
    await expect(meta(page, "Attempt")).to_have_text("2")
    # The input, pretty printed (one field per line).
    input_box = page.get_by_role("region", name="Input").locator("pre")
    await expect(input_box).to_have_text('{\n  "failures": 1\n}')
    await page.screenshot(path=shot("job-finished-1280.png"), full_page=True)
    await browsing.no_sideways_scroll(360)
    await page.screenshot(path=shot("job-finished-360.png"), full_page=True)
    browsing.assert_no_console_errors()


async def test_running_job_page_has_stop_and_no_finish_yet(browsing: Browsing) -> None:
    """While it runs: Stop is there, Started is set, no Finished or Duration row yet."""
    page = browsing.page
    job_id = await browsing.enqueue("demo.count", {"n": 200, "delay": 0.05})
    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(page.get_by_role("status").filter(has_text="State:")).to_contain_text("running")
    await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    await expect(meta(page, "Started")).to_contain_text(YEAR)
    await expect(page.locator("dl.meta dt")).not_to_contain_text(["Finished"])
    await expect(meta(page, "Attempt")).to_have_text("1")
    await page.get_by_role("button", name="Stop").click()
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    await expect(meta(page, "Duration")).to_have_text(DURATION)
    browsing.assert_no_console_errors()


async def test_list_shows_date_and_duration(browsing: Browsing) -> None:
    """Each row: when it was created with the date, and how long it ran ("—" before it started)."""
    page = browsing.page
    done = await browsing.enqueue("demo.count", {"n": 3, "delay": 0.1})
    await browsing.finished(done)
    waiting = await browsing.enqueue("demo.count", {"n": 1}, delay=600)
    await page.goto(f"{browsing.base}/")
    done_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=done[:8]))
    await expect(done_row.locator(".col-created")).to_contain_text(YEAR)
    await expect(done_row.locator(".col-duration")).to_have_text(DURATION)
    took = await done_row.locator(".col-duration").inner_text()
    assert 0.25 <= float(took.split()[0]) < 10
    await expect(page.get_by_role("columnheader", name="Duration")).to_be_visible()
    waiting_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=waiting[:8]))
    await expect(waiting_row.locator(".col-duration")).to_have_text("—")
    await page.screenshot(path=shot("list-1280.png"), full_page=True)
    await browsing.no_sideways_scroll(360)
    await page.screenshot(path=shot("list-360.png"), full_page=True)
    browsing.assert_no_console_errors()


async def test_new_job_form_opens_on_an_example_that_runs_a_while(browsing: Browsing) -> None:
    """/new opens on demo.count with its example; submitted as is, the job visibly runs
    (progress below 100 % on its page) and then succeeds; the form then reopens on the
    kind last started; a kind without examples gets a skeleton."""
    page = browsing.page
    await page.goto(f"{browsing.base}/new")
    await expect(page.get_by_label("Kind")).to_have_value("demo.count")
    content = page.get_by_label("Content (JSON)")
    await expect(content).to_have_value('{\n  "n": 30,\n  "delay": 0.1\n}')
    await page.screenshot(path=shot("new-job-1280.png"), full_page=True)
    await page.get_by_role("button", name="Start job").click()

    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    bar = page.get_by_role("progressbar", name="Job progress")
    seen = await wait_until(
        lambda: bar.get_attribute("aria-valuenow"),
        lambda v: v is not None and 0 < float(v) < 100,
    )
    assert seen is not None
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    final = await browsing.finished(job_id)
    assert final["state"] == "succeeded"
    await expect(page.get_by_text('"counted": 30')).to_be_visible()

    # Another kind started from the form is where the form opens next time.
    await page.goto(f"{browsing.base}/new")
    await page.get_by_label("Kind").select_option("demo.report")
    await expect(content).to_have_value(re.compile(r'"rows": 200'))
    await page.get_by_role("button", name="Start job").click()
    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    await page.goto(f"{browsing.base}/new")
    await expect(page.get_by_label("Kind")).to_have_value("demo.report")
    # A kind whose schema has no example starts from its required fields.
    await page.get_by_label("Kind").select_option("demo.saga.compensate")
    await expect(content).to_have_value(re.compile(r'"jobId": ""'))
    browsing.assert_no_console_errors()
