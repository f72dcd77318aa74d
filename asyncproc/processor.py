"""A processor of external kinds (API.md section 14) that runs in any Python process:
it takes jobs over HTTP, runs a function on each, keeps their leases alive and reports
the outcome. It needs no asyncproc server code, only the API.

    async def render(job: ExternalJob) -> dict[str, int]:
        for row in range(job.content["rows"]):
            await job.progress(percent=100 * row / job.content["rows"], biz_step="rendering")
        return {"rows": job.content["rows"]}

    await Processor("http://127.0.0.1:8000", ["reports.render"], render).run()

A stop request cancels the function (its `finally` blocks run) and confirms the stop;
`JobError` / `RetryableJobError` fail the job with their fields (retried while the kind's
retries last); any other exception fails it with its traceback; the return value is the
result as for a Python handler (bytes, str, `Result`, JSON-encodable, or None).
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import httpx
import msgspec

from .context import encode_result
from .errors import ApiError, JobError, RetryableJobError

__all__ = ["ExternalJob", "Processor"]

log = logging.getLogger("asyncproc.processor")

JobFunction = Callable[["ExternalJob"], Awaitable[Any]]


class _Answer(msgspec.Struct, frozen=True, rename="camel"):
    stop_requested: bool
    lease_until: datetime


class ExternalJob:
    """One job taken by a `Processor`: its input and a way to report progress."""

    def __init__(self, processor: Processor, item: dict[str, Any]) -> None:
        self._processor = processor
        self.status: dict[str, Any] = item["job"]
        self.id: str = self.status["id"]
        self.kind: str = self.status["kind"]
        self.attempt: int = self.status["attempt"]
        self.key: str | None = self.status["key"]
        self.content: Any = item["content"]
        self.headers: dict[str, str] = item["headers"]
        self.token: str = item["token"]
        self.lease_until = msgspec.convert(item["leaseUntil"], datetime)
        self.stop_requested = False
        self.scope = anyio.CancelScope()

    async def progress(
        self,
        percent: float | None = None,
        biz_step: str | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress (None fields keep their value); also renews the lease."""
        body: dict[str, Any] = {"token": self.token}
        for name, value in (("percent", percent), ("bizStep", biz_step), ("message", message)):
            if value is not None:
                body[name] = value
        await self._processor._report(self, body)


class Processor:
    """Runs `function` on jobs of `kinds` taken from the server at `base_url`, at most
    `concurrency` at once; `token` is an API token (sent as a Bearer token)."""

    def __init__(
        self,
        base_url: str,
        kinds: Sequence[str],
        function: JobFunction,
        *,
        worker: str | None = None,
        concurrency: int = 1,
        wait: float = 20.0,
        token: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.kinds = list(kinds)
        self.function = function
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = concurrency
        self.wait = wait
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=wait + 30
        )
        self._owns_http = http is None
        self.running: dict[str, ExternalJob] = {}
        self.done = 0  # jobs this processor ended (any outcome)

    async def aclose(self) -> None:
        """Close the HTTP client (if this processor made it)."""
        if self._owns_http:
            await self._http.aclose()

    async def _post(self, path: str, body: Any) -> Any:
        response = await self._http.post(path, json=body)
        if response.status_code >= 400:
            raise _error(response)
        return response.json() if response.content else None

    async def run(self) -> None:
        """Take and run jobs until cancelled; a refused or failed call is retried."""
        room = anyio.Semaphore(self.concurrency)
        async with anyio.create_task_group() as jobs:
            while True:
                await room.acquire()  # one free slot at least; then every free one
                free = 1
                while room.value:
                    room.acquire_nowait()
                    free += 1
                try:
                    items = await self._take(free)
                except (httpx.TransportError, ApiError) as exc:
                    log.warning("take failed: %s; trying again", exc)
                    items = []
                    await anyio.sleep(1.0)
                for _ in range(free - len(items)):
                    room.release()
                for item in items:
                    job = ExternalJob(self, item)
                    self.running[job.id] = job
                    jobs.start_soon(self._run_job, job, room)

    async def _take(self, count: int) -> list[dict[str, Any]]:
        body = {"kinds": self.kinds, "worker": self.worker, "max": count, "wait": self.wait}
        answer = await self._post("/api/workers/take", body)
        items: list[dict[str, Any]] = answer["items"]
        return items

    async def _run_job(self, job: ExternalJob, room: anyio.Semaphore) -> None:
        try:
            async with anyio.create_task_group() as beat:
                beat.start_soon(self._heartbeat, job)
                try:
                    await self._finish(job)
                finally:
                    beat.cancel_scope.cancel()
        except ApiError as exc:
            if exc.code != "lease_lost":
                raise
            log.warning("job %s: lost its lease; abandoned", job.id)
        finally:
            del self.running[job.id]
            self.done += 1
            room.release()

    async def _heartbeat(self, job: ExternalJob) -> None:
        """Renew the lease a third of the way through it; hear of stop requests."""
        while True:
            left = (job.lease_until - datetime.now(job.lease_until.tzinfo)).total_seconds()
            await anyio.sleep(max(0.05, left / 3))
            try:
                await self._report(job, {"token": job.token})
            except httpx.TransportError as exc:
                log.warning("job %s: heartbeat failed: %s", job.id, exc)
            except ApiError as exc:
                if exc.code == "lease_lost":
                    job.scope.cancel()  # another processor runs it now
                    return
                log.warning("job %s: heartbeat refused: %s", job.id, exc)

    async def _report(self, job: ExternalJob, body: dict[str, Any]) -> None:
        answer = msgspec.convert(
            await self._post(f"/api/workers/jobs/{job.id}/progress", body), _Answer
        )
        job.lease_until = answer.lease_until
        if answer.stop_requested and not job.stop_requested:
            job.stop_requested = True
            job.scope.cancel()

    async def _finish(self, job: ExternalJob) -> None:
        path = f"/api/workers/jobs/{job.id}"
        error: dict[str, Any] | None = None
        retryable = False
        value: Any = None
        with job.scope:
            try:
                value = await self.function(job)
            except JobError as exc:
                error = {"errorId": exc.error_id, "bizMsg": exc.biz_msg, "techMsg": exc.tech_msg}
                error["techInfo"] = traceback.format_exc()
                retryable = isinstance(exc, RetryableJobError)
            except Exception as exc:
                error = {
                    "errorId": "unhandled",
                    "techMsg": str(exc) or type(exc).__name__,
                    "techInfo": traceback.format_exc(),
                }
        if job.stop_requested:
            await self._post(f"{path}/stopped", {"token": job.token})
            return
        if job.scope.cancelled_caught:
            raise ApiError(409, "lease_lost", f"job {job.id} lost its lease")
        if error is not None:
            body = {k: v for k, v in error.items() if v is not None}
            await self._post(
                f"{path}/fail", {"token": job.token, "error": body, "retryable": retryable}
            )
            return
        data, mime = encode_result(value)
        headers = {"content-type": mime} if mime else {}
        response = await self._http.put(
            f"{path}/result", params={"token": job.token}, content=data or b"", headers=headers
        )
        if response.status_code >= 400:
            raise _error(response)


def _error(response: httpx.Response) -> ApiError:
    from .client import api_error  # the client's reading of error bodies

    return api_error(response)
