"""A Python client of the public HTTP API (API.md): `AsyncClient` and its sync twin `Client`.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.enqueue("demo.count", {"n": 10})
        done = await client.wait(job.id, on_progress=print)
        data, mime = await client.result(job.id)

`Client` offers the same methods without `await`: it runs `AsyncClient` on an
event loop in a daemon thread, so there is one implementation of the logic.
Refusals raise `ApiError`; transport problems raise httpx's exceptions.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, NamedTuple, ParamSpec, TypeVar
from urllib.parse import quote

import anyio
import httpx
import msgspec
from anyio.from_thread import BlockingPortal

from .errors import ApiError
from .messages import state_phrase
from .model import JobState, JobStatus

__all__ = [
    "ApiError",
    "AsyncClient",
    "BatchItem",
    "Client",
    "ExternalJob",
    "JobPage",
    "JobResult",
    "Processor",
    "ProgressCallback",
]

P = ParamSpec("P")
T = TypeVar("T")

# Called with every new status while waiting; may be a coroutine function.
ProgressCallback = Callable[[JobStatus], Awaitable[object] | object]

# The server caps a long poll at 60 s; a shorter poll survives idle-timeout proxies.
LONG_POLL = 25.0
USER_AGENT = "asyncproc-client/0.1"


class JobPage(msgspec.Struct, frozen=True):
    """One page of `GET /api/jobs`: the statuses, newest first, and the next cursor."""

    items: list[JobStatus]
    next: str | None = None


class BatchItem(msgspec.Struct, frozen=True):
    """One item's outcome in a batch: `created`, `existing` (status set) or `refused` (error)."""

    outcome: str
    status: JobStatus | None
    error: dict[str, Any] | None


class _BatchAnswer(msgspec.Struct, frozen=True):
    items: list[BatchItem]


def _json(response: httpx.Response) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.json.decode(response.content)
    return value


class JobResult(NamedTuple):
    """A finished job's result bytes and MIME type (both None when it has no result)."""

    data: bytes | None
    mime: str | None


_status_decoder = msgspec.json.Decoder(JobStatus)
_page_decoder = msgspec.json.Decoder(JobPage)
_batch_decoder = msgspec.json.Decoder(_BatchAnswer)
_encoder = msgspec.json.Encoder()


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/api/jobs/{quote(job_id, safe='')}{suffix}"


def api_error(response: httpx.Response) -> ApiError:
    """The `ApiError` of a non-2xx answer (error body, or the job status of a 409)."""
    code = f"http_{response.status_code}"
    message = response.reason_phrase or "error"
    status: JobStatus | None = None
    detail: dict[str, Any] = {}
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    # A failed job's status also has an `error` object: look for a status first.
    if isinstance(body, dict) and {"id", "state", "version"} <= body.keys():
        try:
            status = _status_decoder.decode(response.content)
        except msgspec.ValidationError:
            status = None
        else:
            code = "state_conflict"
            message = _state_message(status)
    if status is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = dict(body["error"])
        code = str(detail.pop("code", code))
        message = str(detail.pop("message", "") or message)
    elif status is None and response.text.strip():
        message = response.text.strip().splitlines()[0][:200]
    retry_after: float | None = None
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return ApiError(
        response.status_code,
        code,
        message,
        status=status,
        detail=detail,
        retry_after=retry_after,
    )


def _state_message(status: JobStatus) -> str:
    message = f"job {status.id} {state_phrase(status.state)}"
    if status.error is not None:
        reason = status.error.biz_msg or status.error.tech_msg or status.error.error_id
        if reason:
            message += f": {reason}"
    return message


class AsyncClient:
    """An async client of one asyncproc server; use it as `async with` or call `aclose()`.

    `timeout` bounds each request (long polls get their wait on top of it);
    `token` is sent as `Authorization: Bearer`; `transport` replaces the network
    (tests, embedding).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        return str(self._http.base_url).rstrip("/")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        wait: float = 0.0,
    ) -> httpx.Response:
        content = None if body is None else _encoder.encode(body)
        headers = {"Content-Type": "application/json"} if content is not None else None
        timeout = httpx.Timeout(self.timeout, read=self.timeout + wait)
        response = await self._http.request(
            method, path, content=content, headers=headers, params=params, timeout=timeout
        )
        if response.is_error:
            raise api_error(response)
        return response

    async def enqueue(
        self,
        kind: str,
        content: Any,
        *,
        request_id: str | None = None,
        key: str | None = None,
        proc_routing: str | None = None,
        callback_routing: str | None = None,
        on_conflict: str | None = None,
    ) -> JobStatus:
        """Queue a job of `kind`; with `request_id`, an existing job of that id is returned
        (and with `on_conflict="existing"`, the key's holder)."""
        body: dict[str, Any] = {"content": content}
        for name, value in (
            ("requestId", request_id),
            ("key", key),
            ("procRouting", proc_routing),
            ("callbackRouting", callback_routing),
            ("onConflict", on_conflict),
        ):
            if value is not None:
                body[name] = value
        response = await self._request("POST", f"/api/{quote(kind, safe='')}/enqueue", body=body)
        return _status_decoder.decode(response.content)

    async def enqueue_batch(
        self,
        kind: str,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        keys: Sequence[str] | None = None,
        content: Any = None,
        on_conflict: str | None = None,
    ) -> list[BatchItem]:
        """Queue many jobs of `kind` at once: `items` (each `{"content", "key"?, ...}`) or
        `keys` sharing `content`; one `BatchItem` (outcome, status, error) per item."""
        body: dict[str, Any] = {}
        if items is not None:
            body["items"] = list(items)
        if keys is not None:
            body["keys"] = list(keys)
            body["content"] = content
        if on_conflict is not None:
            body["onConflict"] = on_conflict
        path = f"/api/{quote(kind, safe='')}/enqueue-batch"
        response = await self._request("POST", path, body=body)
        return _batch_decoder.decode(response.content).items

    async def key_context(self, kind: str, key: str) -> dict[str, Any]:
        """The key's rule, holder and recent jobs (`GET /api/keys/{kind}/{key}`)."""
        path = f"/api/keys/{quote(kind, safe='')}/{quote(key, safe='')}"
        return _json(await self._request("GET", path))

    async def schedules(self) -> list[dict[str, Any]]:
        """Every schedule, by name."""
        items: list[dict[str, Any]] = _json(await self._request("GET", "/api/schedules"))["items"]
        return items

    async def schedule_action(self, name: str, action: str) -> dict[str, Any]:
        """`pause` or `resume` a schedule (its new state), or `trigger` it (the job's status)."""
        path = f"/api/schedules/{quote(name, safe='')}/{action}"
        return _json(await self._request("POST", path))

    async def post_event(self, event: str, data: Any) -> list[dict[str, Any]]:
        """Post an event; one item (trigger, outcome, status, error) per listening trigger."""
        path = f"/api/events/{quote(event, safe='')}"
        items: list[dict[str, Any]] = _json(await self._request("POST", path, body=data))["items"]
        return items

    async def status(
        self, job_id: str, *, wait: float = 0.0, since: int | None = None
    ) -> JobStatus:
        """The job's status; with `wait`, long-polls up to that many seconds for a
        version above `since` (default: the version when the call arrives)."""
        params: dict[str, Any] = {}
        if wait > 0:
            params["wait"] = f"{wait:g}"
            if since is not None:
                params["since"] = since
        response = await self._request("GET", _job_path(job_id), params=params, wait=wait)
        return _status_decoder.decode(response.content)

    async def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        # The sync twin has no cancel scope to offer, so both take a plain timeout.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> JobStatus:
        """Wait for the job to end and return its terminal status.

        `on_progress(status)` is called with the current status and then with every
        change (long poll, no tight loop). Raises `TimeoutError` after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        status = await self.status(job_id)
        await _notify(on_progress, status)
        while not status.state.terminal:
            poll = LONG_POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} still {status.state} after {timeout}s")
                poll = min(poll, left)
            latest = await self.status(job_id, wait=poll, since=status.version)
            if latest.version != status.version:
                status = latest
                await _notify(on_progress, status)
        return status

    async def stop(self, job_id: str) -> JobStatus:
        """Ask the job to stop: a queued job stops at once, a running one is cancelled
        (its status shows `stopRequested` until it has exited). `ApiError` 409 when
        it already succeeded or failed."""
        response = await self._request("POST", _job_path(job_id, "/stop"))
        return _status_decoder.decode(response.content)

    async def result(self, job_id: str) -> JobResult:
        """The result bytes and MIME type of a succeeded job (None, None without one);
        `ApiError` 409 with the status when the job has not succeeded."""
        response = await self._request("GET", _job_path(job_id, "/result"))
        if response.status_code == 204:
            return JobResult(None, None)
        return JobResult(response.content, response.headers.get("content-type"))

    async def jobs(
        self,
        *,
        kind: str | None = None,
        state: JobState | str | None = None,
        key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; pass `page.next` as `cursor` for the next."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (
            ("kind", kind),
            ("state", state),
            ("key", key),
            ("cursor", cursor),
            ("parent", parent),
        ):
            if value is not None:
                params[name] = str(value)
        response = await self._request("GET", "/api/jobs", params=params)
        return _page_decoder.decode(response.content)

    async def iter_jobs(
        self,
        *,
        kind: str | None = None,
        state: JobState | str | None = None,
        key: str | None = None,
        page_size: int = 50,
    ) -> AsyncIterator[JobStatus]:
        """Every job matching the filters, newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            page = await self.jobs(kind=kind, state=state, key=key, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next is None:
                return
            cursor = page.next


async def _notify(callback: ProgressCallback | None, status: JobStatus) -> None:
    if callback is None:
        return
    outcome = callback(status)
    if inspect.isawaitable(outcome):
        await outcome


class _LoopThread:
    """An event loop in a daemon thread, reached through an anyio blocking portal.

    A daemon thread (rather than `start_blocking_portal`'s pool thread) never
    holds up interpreter exit when a client is not closed.
    """

    def __init__(self) -> None:
        ready: queue.SimpleQueue[BlockingPortal | BaseException] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="asyncproc-client", daemon=True
        )
        self._thread.start()
        got = ready.get()
        if isinstance(got, BaseException):
            raise got
        self.portal = got

    @staticmethod
    def _run(ready: queue.SimpleQueue[BlockingPortal | BaseException]) -> None:
        async def main() -> None:
            async with BlockingPortal() as portal:
                ready.put(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(main)
        except BaseException as exc:  # start-up failed: hand it to the waiting caller
            ready.put(exc)

    def call(self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `func` on the loop and wait; an interrupt (Ctrl-C) cancels it there."""

        async def run() -> T:
            return await func(*args, **kwargs)

        future: Future[T] = self.portal.start_task_soon(run)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and end the thread."""
        if self._thread.is_alive():
            try:
                self.portal.call(self.portal.stop, True)
            except RuntimeError:  # the loop already ended
                pass
            self._thread.join(5)


def _shutdown(loop: _LoopThread, client: AsyncClient) -> None:
    try:
        loop.call(client.aclose)
    finally:
        loop.stop()


class Client:
    """The blocking twin of `AsyncClient`: same methods, same arguments, no `await`.

    Use it as `with Client(url) as client:` or call `close()`. `on_progress` is
    called on the client's loop thread.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._loop = _LoopThread()
        self._async = AsyncClient(base_url, token, timeout=timeout, transport=transport)
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._async)

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        return self._async.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        self._finalizer()

    def enqueue(
        self,
        kind: str,
        content: Any,
        *,
        request_id: str | None = None,
        key: str | None = None,
        proc_routing: str | None = None,
        callback_routing: str | None = None,
        on_conflict: str | None = None,
    ) -> JobStatus:
        """See `AsyncClient.enqueue`."""
        return self._loop.call(
            self._async.enqueue,
            kind,
            content,
            request_id=request_id,
            key=key,
            proc_routing=proc_routing,
            callback_routing=callback_routing,
            on_conflict=on_conflict,
        )

    def enqueue_batch(
        self,
        kind: str,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        keys: Sequence[str] | None = None,
        content: Any = None,
        on_conflict: str | None = None,
    ) -> list[BatchItem]:
        """See `AsyncClient.enqueue_batch`."""
        return self._loop.call(
            self._async.enqueue_batch,
            kind,
            items=items,
            keys=keys,
            content=content,
            on_conflict=on_conflict,
        )

    def key_context(self, kind: str, key: str) -> dict[str, Any]:
        """See `AsyncClient.key_context`."""
        return self._loop.call(self._async.key_context, kind, key)

    def schedules(self) -> list[dict[str, Any]]:
        """See `AsyncClient.schedules`."""
        return self._loop.call(self._async.schedules)

    def schedule_action(self, name: str, action: str) -> dict[str, Any]:
        """See `AsyncClient.schedule_action`."""
        return self._loop.call(self._async.schedule_action, name, action)

    def post_event(self, event: str, data: Any) -> list[dict[str, Any]]:
        """See `AsyncClient.post_event`."""
        return self._loop.call(self._async.post_event, event, data)

    def status(self, job_id: str, *, wait: float = 0.0, since: int | None = None) -> JobStatus:
        """See `AsyncClient.status`."""
        return self._loop.call(self._async.status, job_id, wait=wait, since=since)

    def wait(
        self,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """See `AsyncClient.wait`; Ctrl-C interrupts the wait (the job keeps running)."""
        return self._loop.call(self._async.wait, job_id, on_progress=on_progress, timeout=timeout)

    def stop(self, job_id: str) -> JobStatus:
        """See `AsyncClient.stop`."""
        return self._loop.call(self._async.stop, job_id)

    def result(self, job_id: str) -> JobResult:
        """See `AsyncClient.result`."""
        return self._loop.call(self._async.result, job_id)

    def jobs(
        self,
        *,
        kind: str | None = None,
        state: JobState | str | None = None,
        key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        parent: str | None = None,
    ) -> JobPage:
        """See `AsyncClient.jobs`."""
        return self._loop.call(
            self._async.jobs,
            kind=kind,
            state=state,
            key=key,
            limit=limit,
            cursor=cursor,
            parent=parent,
        )

    def iter_jobs(
        self,
        *,
        kind: str | None = None,
        state: JobState | str | None = None,
        key: str | None = None,
        page_size: int = 50,
    ) -> Iterator[JobStatus]:
        """See `AsyncClient.iter_jobs`."""
        cursor: str | None = None
        while True:
            page = self.jobs(kind=kind, state=state, key=key, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next is None:
                return
            cursor = page.next


# The processor of external kinds, offered here beside the client (it uses `api_error`).
from .processor import ExternalJob, Processor  # noqa: E402
