"""The progress page in a real browser against a real server.

Each test serves the app with uvicorn on a loopback port, drives Debian's
chromium headless through playwright, and checks what a user sees: the bar
moving, the Stop button stopping, results and errors shown, the list updating.
Every test also asserts the page logged no console errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.e2e.browsing import Browsing
from tests.support import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.anyio]


async def bar_value(page: Page) -> float | None:
    """The job view's aria-valuenow (None while indeterminate)."""
    raw = await page.get_by_role("progressbar", name="Job progress").get_attribute("aria-valuenow")
    return None if raw is None else float(raw)


def state_line(page: Page) -> Any:
    """The job view's "State: ..." line."""
    return page.get_by_role("status").filter(has_text="State:")


async def test_count_from_the_form_advances_and_stops(browsing: Browsing, tmp_path: Path) -> None:
    """New job form -> the bar advances with bizStep "counting" -> Stop -> stopped, bar still."""
    page = browsing.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{browsing.base}/new")
    await page.get_by_label("Kind").select_option("demo.count")
    content = page.get_by_label("Content (JSON)")
    # Pre-filled from the kind's example content.
    await expect(content).to_have_value(re.compile(r'"n": 30,\s*"delay": 0.1'))
    await content.fill('{"n": 50, "delay": 0.1}')
    await page.get_by_role("button", name="Start job").click()

    await expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    await expect(page.get_by_role("heading", level=1)).to_contain_text("demo.count")
    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*running"))
    await expect(page.get_by_text("counting", exact=True)).to_be_visible()
    bar = page.get_by_role("progressbar", name="Job progress")
    await expect(bar).to_have_attribute("aria-valuenow", re.compile(r"\d"))
    first = await bar_value(page)
    assert first is not None
    later = await wait_until(lambda: bar_value(page), lambda v: v is not None and v > first)
    assert later is not None
    await expect(page.get_by_text(re.compile(r"^\d+ of 50$"))).to_be_visible()
    await expect(page.get_by_text(re.compile(r"^Elapsed "))).to_be_visible()
    await expect(page.get_by_text(re.compile(r"^ETA about "))).to_be_visible()

    await page.screenshot(path=tmp_path / "job-running-desktop.png", full_page=True)
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.screenshot(path=tmp_path / "job-running-360.png", full_page=True)
    # Nothing sticks out sideways at 360 px.
    overflow = await page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 360

    stop = page.get_by_role("button", name="Stop")
    await expect(stop).to_be_enabled()
    # Keyboard only: Tab to the button, Enter to press it.
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await stop.evaluate("button => button === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the Stop button")
    await page.keyboard.press("Enter")
    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*stopped"))
    # A finished job has nothing to stop: no button.
    await expect(stop).to_have_count(0)
    stopped_heading = page.get_by_role("heading", name="Stopped")
    await expect(stopped_heading).to_be_visible()
    # Focus moved on from the vanished button instead of falling to the top.
    await expect(stopped_heading).to_be_focused()

    stopped_at = await bar_value(page)
    final = await browsing.status(job_id)
    assert final["state"] == "stopped"
    assert stopped_at is not None
    assert stopped_at < 100
    assert stopped_at == pytest.approx(final["progress"]["percent"], abs=0.1)
    # Let time pass on the server (another job counting five steps) and check
    # the bar has not moved.
    clock = await browsing.enqueue("demo.count", {"n": 5, "delay": 0.1})
    assert (await browsing.finished(clock))["state"] == "succeeded"
    assert await bar_value(page) == stopped_at
    await page.screenshot(path=tmp_path / "job-stopped-360.png", full_page=True)
    # Live updates came over SSE, without polling.
    assert any(url.endswith(f"/api/jobs/{job_id}/events") for url in requested)
    assert not any("wait=" in url for url in requested)
    browsing.assert_no_console_errors()


async def test_long_poll_when_the_browser_has_no_event_source(browsing: Browsing) -> None:
    """Without EventSource the job view follows the job by long poll to the end."""
    page = browsing.page
    await page.add_init_script("delete window.EventSource")
    job_id = await browsing.enqueue("demo.count", {"n": 20, "delay": 0.05})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*succeeded"))
    await expect(page.get_by_role("progressbar", name="Job progress")).to_have_attribute(
        "aria-valuenow", "100"
    )
    await expect(page.get_by_text('"counted": 20')).to_be_visible()
    assert any("wait=" in url for url in requested)
    assert not any(url.endswith("/events") for url in requested)
    browsing.assert_no_console_errors()


async def test_stop_requested_and_unknown_percent(browsing: Browsing) -> None:
    """While a stop is under way the button still says Stop to assistive tech and shows
    "stopping…"; an unknown percent makes the bar indeterminate (no aria-valuenow)."""
    page = browsing.page
    job_id = await browsing.enqueue("demo.sleep", {"seconds": 30})
    status = await browsing.status(job_id)
    # A handler that does not honour stop quickly: freeze the job as the API
    # reports it mid-stop (running, stopRequested, percent unknown).
    frozen = {
        **status,
        "state": "running",
        "stopRequested": True,
        "progress": {"percent": None, "bizStep": "tidying up", "message": None},
        "version": status["version"] + 1,
    }
    body = json.dumps(frozen)
    await page.route(
        re.compile(rf"/api/jobs/{job_id}(\?.*)?$"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=body),
    )
    await page.route(
        f"**/api/jobs/{job_id}/events",
        lambda route: route.fulfill(
            status=200,
            content_type="text/event-stream",
            body=f"retry: 60000\nid: 1\ndata: {body}\n\n",
        ),
    )
    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(state_line(page)).to_have_text(
        re.compile(r"State:\s*running\s*\(stop requested\)")
    )
    stop = page.get_by_role("button", name="Stop", exact=True)
    await expect(stop).to_have_attribute("aria-disabled", "true")
    await expect(page.get_by_text("stopping…")).to_be_visible()
    await expect(page.get_by_text("tidying up", exact=True)).to_be_visible()
    bar = page.get_by_role("progressbar", name="Job progress")
    await expect(bar).to_have_class(re.compile(r"\bindeterminate\b"))
    assert await bar.get_attribute("aria-valuenow") is None
    await page.unroute_all()
    await browsing.api.post(f"/api/jobs/{job_id}/stop")
    browsing.assert_no_console_errors()


async def test_finished_report_shows_its_csv_as_a_table(browsing: Browsing, tmp_path: Path) -> None:
    """A succeeded demo.report opened from its URL shows the first 500 CSV rows as a table."""
    page = browsing.page
    job_id = await browsing.enqueue("demo.report", {"rows": 600, "delay": 0})
    assert (await browsing.finished(job_id))["state"] == "succeeded"

    await page.goto(f"{browsing.base}/jobs/{job_id}")
    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*succeeded"))
    bar = page.get_by_role("progressbar", name="Job progress")
    await expect(bar).to_have_attribute("aria-valuenow", "100")
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    table = page.get_by_role("table")
    await expect(table.get_by_role("columnheader")).to_have_text(["id", "value"])
    await expect(table.locator("tbody tr")).to_have_count(500)
    await expect(table.locator("tbody tr").nth(2).get_by_role("cell")).to_have_text(["3", "9"])
    await expect(table.locator("tbody tr").last.get_by_role("cell")).to_have_text(["500", "250000"])
    await expect(table.locator("caption")).to_contain_text("first 500 rows")
    download = page.get_by_role("link", name="Download the result")
    await expect(download).to_have_attribute("href", f"/api/jobs/{job_id}/result?download=1")
    await expect(page.get_by_text(re.compile(r"\(text/csv, [\d.]+ kB\)"))).to_be_visible()
    await page.screenshot(path=tmp_path / "job-report.png", full_page=False)
    browsing.assert_no_console_errors()


async def test_failed_job_shows_the_business_message(browsing: Browsing, tmp_path: Path) -> None:
    """demo.fail (reported): the page shows failed, the bizMsg, then the techMsg."""
    page = browsing.page
    message = "The ledger for March is already closed"
    job_id = await browsing.enqueue("demo.fail", {"mode": "reported", "message": message})
    await page.goto(f"{browsing.base}/jobs/{job_id}")

    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*failed"))
    alert = page.get_by_role("alert").filter(has_text="The job failed")
    await expect(alert.get_by_text(message, exact=True)).to_be_visible()
    await expect(alert).to_contain_text("Technical message: demo failure")
    await expect(alert).to_contain_text("Error id: demo.failed")
    await expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.screenshot(path=tmp_path / "job-failed-360.png", full_page=True)
    browsing.assert_no_console_errors()


async def test_list_updates_when_a_job_finishes(browsing: Browsing, tmp_path: Path) -> None:
    """The jobs list shows running jobs finishing, and new jobs, without a reload."""
    page = browsing.page
    running = await browsing.enqueue("demo.count", {"n": 20, "delay": 0.1})
    await page.goto(f"{browsing.base}/")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
    # A reload would lose this.
    await page.evaluate("window.__sameDocument = true")

    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=running[:8]))
    await expect(row).to_contain_text(re.compile(r"queued|running"))
    await expect(row.get_by_role("progressbar")).to_be_visible()
    await expect(row).to_contain_text("succeeded", timeout=30_000)
    await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")

    later = await browsing.enqueue("demo.count", {"n": 10, "delay": 0.1})
    later_row = page.get_by_role("row").filter(has=page.get_by_role("link", name=later[:8]))
    await expect(later_row).to_contain_text("succeeded", timeout=30_000)
    # Newest first.
    await expect(page.locator("tbody tr").first).to_contain_text(later[:8])
    assert await page.evaluate("window.__sameDocument") is True
    await page.screenshot(path=tmp_path / "jobs-list.png", full_page=True)

    # The row leads to the job view; Back returns to the list.
    await later_row.get_by_role("link").click()
    await expect(page).to_have_url(f"{browsing.base}/jobs/{later}")
    await expect(state_line(page)).to_have_text(re.compile(r"State:\s*succeeded"))
    await expect(page.get_by_text('"counted": 10')).to_be_visible()
    await page.go_back()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
    browsing.assert_no_console_errors()


async def test_list_filters_and_pages(browsing: Browsing) -> None:
    """Filter by kind and state; page through older jobs by cursor."""
    page = browsing.page
    ids = [await browsing.enqueue("demo.bytes", {"text": str(i)}) for i in range(27)]
    failed = await browsing.enqueue("demo.fail", {"mode": "reported", "message": "no"})
    for job_id in [*ids, failed]:
        await browsing.finished(job_id)

    await page.goto(f"{browsing.base}/?kind=demo.bytes")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(25)
    await expect(page.get_by_label("Kind")).to_have_value("demo.bytes")
    await expect(rows.first).to_contain_text(ids[-1][:8])
    await page.get_by_role("button", name="Older →").click()
    await expect(page).to_have_url(re.compile(r"cursor="))
    await expect(rows).to_have_count(2)
    await expect(rows.last).to_contain_text(ids[0][:8])
    await expect(page.get_by_role("button", name="Older →")).to_be_hidden()
    await page.get_by_role("button", name="← Newer").click()
    await expect(rows).to_have_count(25)

    await page.get_by_label("Kind").select_option("")
    await page.get_by_label("State").select_option("failed")
    await expect(page).to_have_url(f"{browsing.base}/?state=failed")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(failed[:8])
    browsing.assert_no_console_errors()


async def test_new_job_shows_readable_422_next_to_the_editor(browsing: Browsing) -> None:
    """Bad content stays on the form with the server's reason; invalid JSON never leaves."""
    page = browsing.page
    await page.goto(f"{browsing.base}/new?kind=demo.count")
    await expect(page.get_by_label("Kind")).to_have_value("demo.count")
    content = page.get_by_label("Content (JSON)")
    await expect(content).to_have_value(re.compile(r'"n"'))

    await content.fill('{"n": 1,')
    await page.get_by_role("button", name="Start job").click()
    problem = page.get_by_role("alert")
    await expect(problem).to_contain_text("not valid JSON")
    await expect(content).to_have_attribute("aria-invalid", "true")

    await content.fill('{"n": "many"}')
    await page.get_by_role("button", name="Start job").click()
    await expect(problem).to_contain_text(
        'content: n: expected an integer of 0 or more, got "many"'
    )
    await expect(page).to_have_url(f"{browsing.base}/new?kind=demo.count")
    # Chromium reports the refused request itself; the page logs nothing.
    browsing.assert_no_console_errors("status of 422")


async def test_unknown_job_url_says_not_found(browsing: Browsing) -> None:
    """A pasted URL of a job that does not exist says so."""
    page = browsing.page
    await page.goto(f"{browsing.base}/jobs/{'0' * 32}")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Job not found")
    browsing.assert_no_console_errors("status of 404")


async def test_selection_lists_the_jobs_it_started(browsing: Browsing, tmp_path: Path) -> None:
    """A demo.select job's page lists the jobs it started (key, state, link) and links to
    the filtered list; a child's page says it came from the selection and links back."""
    page = browsing.page
    selection = await browsing.enqueue("demo.select", {"count": 3})
    assert (await browsing.finished(selection))["state"] == "succeeded"

    await page.goto(f"{browsing.base}/jobs/{selection}")
    await expect(page.get_by_text("Started by hand")).to_be_visible()
    started = page.get_by_role("region", name="Started jobs")
    rows = started.locator("tbody tr")
    await expect(rows).to_have_count(3)
    # Newest first: the selection yields k-1, k-2, k-3 in that order.
    await expect(started.get_by_role("cell").filter(has_text=re.compile(r"^k-\d$"))).to_have_text(
        ["k-3", "k-2", "k-1"]
    )
    await expect(rows.filter(has_text="succeeded")).to_have_count(3, timeout=30_000)
    await page.screenshot(path=tmp_path / "selection-desktop.png", full_page=True)
    await browsing.no_sideways_scroll(390)
    await page.screenshot(path=tmp_path / "selection-390.png", full_page=True)

    # The whole set in the jobs list, filtered by parent, and the filter says so.
    await started.get_by_role("link", name="See all started jobs").click()
    await expect(page).to_have_url(f"{browsing.base}/?parent={selection}")
    await expect(page.locator("table.jobs tbody tr")).to_have_count(3)
    await expect(page.get_by_text(re.compile(rf"Started by job {selection[:8]}"))).to_be_visible()
    await page.go_back()

    child_row = started.locator("tbody tr").filter(has_text="k-2")
    await child_row.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(r"/jobs/[^/]+$"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("demo.keyed")
    origin = page.locator(".meta")
    await expect(origin).to_contain_text("Started by selection demo.select")
    await expect(origin.get_by_role("link", name="demo.select")).to_have_attribute(
        "href", f"/jobs/{selection}"
    )
    await expect(origin.get_by_role("link", name=re.compile(r"^job "))).to_have_attribute(
        "href", f"/jobs/{selection}"
    )
    # A job that started nothing has no such section.
    await expect(page.get_by_role("region", name="Started jobs")).to_be_hidden()
    await origin.get_by_role("link", name=re.compile(r"^job ")).click()
    await expect(page).to_have_url(f"{browsing.base}/jobs/{selection}")
    await expect(page.get_by_role("region", name="Started jobs").locator("tbody tr")).to_have_count(
        3
    )
    browsing.assert_no_console_errors()


async def test_keyed_job_links_to_the_jobs_of_its_key(browsing: Browsing, tmp_path: Path) -> None:
    """A keyed job's page shows its key as a link to the list filtered by kind and key; the
    list says which filter is on, and removing it shows every job again."""
    page = browsing.page
    other = await browsing.enqueue("demo.keyed", {"seconds": 0}, key="order-7")
    await browsing.finished(other)
    first = await browsing.enqueue("demo.keyed", {"seconds": 0}, key="order-42")
    await browsing.finished(first)
    second = await browsing.enqueue("demo.keyed", {"seconds": 0}, key="order-42")
    await browsing.finished(second)

    await page.goto(f"{browsing.base}/jobs/{second}")
    meta = page.locator(".meta")
    await expect(meta).to_contain_text("Started by hand")
    key_link = meta.get_by_role("link", name="order-42")
    await expect(key_link).to_have_attribute("href", "/?kind=demo.keyed&key=order-42")
    await page.screenshot(path=tmp_path / "keyed-desktop.png", full_page=True)
    await key_link.click()

    await expect(page).to_have_url(f"{browsing.base}/?kind=demo.keyed&key=order-42")
    rows = page.locator("table.jobs tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text(second[:8])
    await expect(rows.last).to_contain_text(first[:8])
    await expect(page.get_by_label("Kind")).to_have_value("demo.keyed")
    chip = page.locator(".chip").filter(has_text="Key")
    await expect(chip).to_have_text(re.compile(r"Key\s*order-42"))
    await browsing.no_sideways_scroll(390)
    await page.screenshot(path=tmp_path / "key-filter-390.png", full_page=True)

    # A state filter keeps the key filter.
    await page.get_by_label("State").select_option("succeeded")
    await expect(page).to_have_url(f"{browsing.base}/?kind=demo.keyed&state=succeeded&key=order-42")
    await expect(rows).to_have_count(2)
    await page.get_by_role("link", name="Remove the key filter").click()
    await expect(page).to_have_url(f"{browsing.base}/?kind=demo.keyed&state=succeeded")
    await expect(rows).to_have_count(3)
    await expect(page.locator(".chip")).to_have_count(0)
    browsing.assert_no_console_errors()


@pytest.mark.parametrize(
    ("trigger", "parent", "says", "link"),
    [
        (
            {"type": "event", "name": "order-paid"},
            False,
            "Started by event trigger order-paid",
            None,
        ),
        ({"type": "message", "name": "orders"}, False, "Started by message trigger orders", None),
        ({"type": "batch", "name": None}, False, "Started in a batch", None),
        ({"type": "compensation", "name": None}, True, "Started to compensate job", "parent"),
        (
            {"type": "schedule", "name": "nightly"},
            False,
            "Started by schedule nightly",
            "/schedules#schedule-nightly",
        ),
    ],
)
async def test_job_page_says_how_the_job_started(
    browsing: Browsing, trigger: dict[str, Any], parent: bool, says: str, link: str | None
) -> None:
    """Each way of starting a job reads as a sentence on its page (the status is the
    API's, with its `trigger` and `parentId` set as those starts set them)."""
    page = browsing.page
    parent_id = await browsing.enqueue("demo.bytes", {"text": "parent"})
    job_id = await browsing.enqueue("demo.bytes", {"text": "child"})
    status = await browsing.finished(job_id)
    body = json.dumps({**status, "trigger": trigger, "parentId": parent_id if parent else None})
    await page.route(
        re.compile(rf"/api/jobs/{job_id}(\?.*)?$"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=body),
    )
    await page.goto(f"{browsing.base}/jobs/{job_id}")
    origin = page.locator(".meta .trigger")
    await expect(origin).to_have_text(re.compile(rf"^{re.escape(says)}"))
    if link == "parent":
        await expect(origin.get_by_role("link")).to_have_attribute("href", f"/jobs/{parent_id}")
    elif link:
        await expect(origin.get_by_role("link")).to_have_attribute("href", link)
    else:
        await expect(origin.get_by_role("link")).to_have_count(0)
    browsing.assert_no_console_errors()
