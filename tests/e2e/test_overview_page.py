"""The operator's overview (/overview) in headless chromium against a real server:
counts per state and per kind, the last hour as an SVG chart, links to the filtered
lists, schedules and dead letters, and the numbers refreshing while it is open."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from tests.e2e.browsing import Browsing
from tests.support import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.anyio]

SHOTS = Path("/tmp/page-shots")


def tile(page: Page, state: str) -> Locator:
    """The count tile of `state`."""
    return page.locator(f"a.tile[data-state='{state}'] .tile-count")


async def test_overview_counts_chart_and_links(browsing: Browsing) -> None:
    page = browsing.page
    done = [await browsing.enqueue("demo.count", {"n": 1, "delay": 0}) for _ in range(3)]
    failed = await browsing.enqueue("demo.fail", {"mode": "reported", "message": "no"})
    for job_id in [*done, failed]:
        await browsing.finished(job_id)
    running = await browsing.enqueue("demo.count", {"n": 600, "delay": 0.1})
    await wait_until(lambda: browsing.status(running), lambda s: s["state"] == "running")

    await page.goto(f"{browsing.base}/overview")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    await expect(page.get_by_role("link", name="Overview")).to_have_attribute(
        "aria-current", "page"
    )
    await expect(tile(page, "succeeded")).to_have_text("3")
    await expect(tile(page, "failed")).to_have_text("1")
    await expect(tile(page, "running")).to_have_text("1")
    await expect(page.get_by_role("link", name="1 running job", exact=True)).to_have_attribute(
        "href", "/?state=running"
    )

    # Per kind and state, each count a link to those jobs.
    count_row = page.locator("table.kinds tr[data-kind='demo.count']")
    await expect(
        count_row.get_by_role("link", name="3 succeeded demo.count jobs")
    ).to_have_attribute("href", "/?kind=demo.count&state=succeeded")
    await expect(count_row.locator("td").last).to_have_text("4")

    # The chart: bars of the finished jobs (succeeded, failed stacked on top) and the
    # line of the enqueued ones, per minute (the jobs may straddle a minute's end).
    chart = page.get_by_role("img", name="Jobs per minute")
    await expect(chart).to_be_visible()
    await expect(chart).to_have_accessible_name(
        re.compile(r"over the last 60 minutes: 5 enqueued, 3 succeeded, 1 failed;")
    )
    await expect(chart.locator("rect.bar-failed")).to_have_count(1)

    async def drawn(selector: str) -> float:
        heights = await chart.locator(selector).evaluate_all(
            "rects => rects.map(r => r.getBBox().height)"
        )
        return float(sum(heights))

    assert await drawn("rect.bar-succeeded") == pytest.approx(3 * await drawn("rect.bar-failed"))
    points = await chart.locator("polyline.line-enqueued").get_attribute("points")
    assert points is not None
    ys = [float(point.split(",")[1]) for point in points.split()]
    assert len(ys) == 60
    assert min(ys) < ys[0]  # the line rises from the hour's empty start
    await expect(page.get_by_text("5 enqueued, 3 succeeded, 1 failed.")).to_be_visible()
    # The same numbers as a table, for those who do not see the chart.
    await page.get_by_text("The last hour as a table").click()
    minutes = page.locator(".minute-table tbody tr")
    sums = [0, 0, 0]
    for index in range(await minutes.count()):
        cells = await minutes.nth(index).locator("td").all_inner_texts()
        sums = [total + int(cell) for total, cell in zip(sums, cells, strict=True)]
    assert sums == [5, 3, 1]
    await page.screenshot(path=SHOTS / "overview-1280.png", full_page=True)

    # It refreshes while open: a new failure shows without a reload, and the link a
    # keyboard user is on keeps the focus.
    await page.evaluate("window.__sameDocument = true")
    failed_tile = page.locator("a.tile[data-state='failed']")
    await failed_tile.focus()
    again = await browsing.enqueue("demo.fail", {"mode": "reported", "message": "again"})
    await browsing.finished(again)
    await expect(tile(page, "failed")).to_have_text("2", timeout=15_000)
    assert await page.evaluate("window.__sameDocument") is True
    await expect(failed_tile).to_be_focused()

    await browsing.no_sideways_scroll(360)
    await page.screenshot(path=SHOTS / "overview-360.png", full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})

    # The links lead to the lists, filtered.
    nav = page.get_by_role("navigation", name="Go to")
    await nav.get_by_role("link", name="Running jobs").click()
    await expect(page).to_have_url(f"{browsing.base}/?state=running")
    await expect(page.get_by_label("State")).to_have_value("running")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.locator("tbody tr")).to_contain_text(running[:8])
    await page.go_back()
    await nav.get_by_role("link", name="Failed jobs").click()
    await expect(page).to_have_url(f"{browsing.base}/?state=failed")
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.go_back()
    await (
        page.locator("table.kinds")
        .get_by_role("link", name="2 failed demo.fail jobs", exact=True)
        .click()
    )
    await expect(page).to_have_url(f"{browsing.base}/?kind=demo.fail&state=failed")
    await expect(page.get_by_label("Kind")).to_have_value("demo.fail")
    await page.go_back()
    await nav.get_by_role("link", name="Schedules").click()
    await expect(page).to_have_url(f"{browsing.base}/schedules")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Schedules")
    await page.go_back()
    await nav.get_by_role("link", name="Dead letters").click()
    await expect(page).to_have_url(f"{browsing.base}/dead-letters")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Dead letters")
    browsing.assert_no_console_errors()


async def test_overview_of_an_empty_server(browsing: Browsing) -> None:
    """No jobs yet: zero tiles, an empty chart that says so, and where to start."""
    page = browsing.page
    await page.goto(f"{browsing.base}/overview")
    await expect(tile(page, "queued")).to_have_text("0")
    await expect(
        page.get_by_text("Nothing was enqueued or finished in the last hour.")
    ).to_be_visible()
    await expect(page.get_by_text("No jobs yet.")).to_be_visible()
    chart = page.get_by_role("img", name="Jobs per minute")
    await expect(chart.locator("rect.bar-succeeded")).to_have_count(0)
    browsing.assert_no_console_errors()
