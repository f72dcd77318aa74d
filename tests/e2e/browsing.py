"""What the browser tests share: chromium's path and flags, and `Browsing`, a page
in headless chromium with the server's base URL and an API client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from playwright.async_api import Page

from tests.support import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: two shared cores, and chromium is not the only thing running.
LONG = 20_000


@dataclass
class Browsing:
    """A page in headless chromium, the server's base URL, an API client, console errors."""

    page: Page
    base: str
    api: httpx.AsyncClient
    errors: list[str] = field(default_factory=list)

    async def enqueue(self, kind: str, content: dict[str, Any], **fields: Any) -> str:
        """Start a job through the API (`fields`: key, requestId...); its id."""
        body = {"content": content, **fields}
        response = await self.api.post(f"/api/{kind}/enqueue", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        """The job's status from the API."""
        response = await self.api.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    async def finished(self, job_id: str) -> dict[str, Any]:
        """Wait until the job is terminal; its status."""
        return await wait_until(
            lambda: self.status(job_id),
            lambda s: s["state"] in {"succeeded", "failed", "stopped"},
            timeout=30,
        )

    async def no_sideways_scroll(self, width: int) -> None:
        """Nothing sticks out sideways at this viewport width."""
        await self.page.set_viewport_size({"width": width, "height": 844})
        overflow = await self.page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width

    def assert_no_console_errors(self, *allowed: str) -> None:
        """No console error, except browser reports of the expected HTTP refusals."""
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert unexpected == []
