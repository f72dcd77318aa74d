"""What a handler sees: `JobContext` (async handlers), `BlockingJobContext`
(plain `def` handlers, run in a worker thread), and the `Result` wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import msgspec

from .errors import JobStopped
from .lifecycle import Report

if TYPE_CHECKING:
    from .model import Trigger
    from .service import EnqueueRequest, ItemOutcome

__all__ = ["BlockingJobContext", "JobContext", "Result", "encode_result"]

JSON_MIME = "application/json"
TEXT_MIME = "text/plain; charset=utf-8"
BYTES_MIME = "application/octet-stream"


class Result(msgspec.Struct, frozen=True):
    """A result with an explicit MIME type: `return Result(csv_bytes, "text/csv")`."""

    data: bytes | str
    mime: str = BYTES_MIME


_json_encoder = msgspec.json.Encoder()


def encode_result(value: Any) -> tuple[bytes | None, str | None]:
    """The stored bytes and MIME type of what a handler returned.

    `None` -> no result; `Result` -> its data and mime; `bytes` -> octet-stream;
    `str` -> text/plain; anything msgspec encodes -> application/json.
    """
    if value is None:
        return None, None
    if isinstance(value, Result):
        data = value.data.encode() if isinstance(value.data, str) else bytes(value.data)
        return data, value.mime
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), BYTES_MIME
    if isinstance(value, str):
        return value.encode(), TEXT_MIME
    return _json_encoder.encode(value), JSON_MIME


Reporter = Callable[[Report], Awaitable[None]]
# (step name, its JSON result) -> stored with the job.
StepStore = Callable[[str, bytes], Coroutine[Any, Any, None]]
# (kind, requests, trigger, parent id) -> one outcome per request: `JobService.enqueue_many`.
Starter = Callable[..., Awaitable[list["ItemOutcome"]]]


class JobContext:
    """Handed to an async handler: who the job is, progress reports, stop checks."""

    __slots__ = (
        "_report",
        "_starter",
        "_step_store",
        "_steps",
        "_stop",
        "attempt",
        "headers",
        "id",
        "incoming_at",
        "key",
        "kind",
    )

    def __init__(
        self,
        *,
        job_id: str,
        kind: str,
        attempt: int,
        incoming_at: datetime | None,
        headers: Mapping[str, str],
        report: Reporter,
        key: str | None = None,
        starter: Starter | None = None,
        steps: Mapping[str, bytes] | None = None,
        step_store: StepStore | None = None,
    ) -> None:
        self.id = job_id
        self.kind = kind
        self.attempt = attempt
        self.incoming_at = incoming_at
        self.headers = dict(headers)
        self.key = key
        self._report = report
        self._starter = starter
        self._steps = dict(steps) if steps else {}
        self._step_store = step_store
        self._stop = False

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (a plain or async function) as the durable step `name`.

        Its result, which must be JSON-encodable, is stored with the job before this
        returns; when the job runs again (a retry, or a redelivery after a lost node)
        a completed step returns its stored result without running `fn`. Either way
        the value returned is the JSON-decoded result, so every attempt sees the same.
        """
        stored = self._steps.get(name)
        if stored is None:
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
            stored = _json_encoder.encode(value)
            if self._step_store is not None:
                await self._step_store(name, stored)
            self._steps[name] = stored
        return msgspec.json.decode(stored)

    @property
    def completed_steps(self) -> list[str]:
        """The names of the steps completed so far (this attempt or an earlier one)."""
        return list(self._steps)

    async def start_jobs(
        self, kind: str, requests: Sequence[EnqueueRequest], *, trigger: Trigger
    ) -> list[ItemOutcome]:
        """Enqueue jobs started by this one (`parentId` = this job), one outcome each."""
        if self._starter is None:
            raise RuntimeError("this context cannot start jobs")
        return await self._starter(kind, requests, trigger=trigger, parent_id=self.id)

    @property
    def stop_requested(self) -> bool:
        """True once the job was asked to stop or passed its processing deadline."""
        return self._stop

    def request_stop(self) -> None:
        """Flag the job as stopping (called by the worker, never by handlers)."""
        self._stop = True

    def raise_if_stopped(self) -> None:
        """Raise `JobStopped` when `stop_requested`; a clean way out of a loop."""
        if self._stop:
            raise JobStopped(self.id)

    async def progress(
        self,
        percent: float | None = None,
        biz_step: str | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress; None leaves a field as it was. Watchers see it at once."""
        await self._report(Report(percent, biz_step, message))


class BlockingJobContext:
    """Handed to a plain `def` handler running in a worker thread; same names, blocking calls."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def id(self) -> str:
        """The job id."""
        return self._ctx.id

    @property
    def kind(self) -> str:
        """The job kind."""
        return self._ctx.kind

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, ..."""
        return self._ctx.attempt

    @property
    def incoming_at(self) -> datetime | None:
        """When the enqueue request arrived."""
        return self._ctx.incoming_at

    @property
    def key(self) -> str | None:
        """The job's business key."""
        return self._ctx.key

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`JobContext.step` from the handler's thread: `fn` runs here, in this thread,
        and the call returns once its result is stored."""
        ctx = self._ctx
        stored = ctx._steps.get(name)
        if stored is None:
            stored = _json_encoder.encode(fn(*args))
            if ctx._step_store is not None:
                anyio.from_thread.run(ctx._step_store, name, stored)
            ctx._steps[name] = stored
        return msgspec.json.decode(stored)

    @property
    def headers(self) -> dict[str, str]:
        """The enqueue request's headers (lower-case names), minus Authorization and Cookie."""
        return self._ctx.headers

    @property
    def stop_requested(self) -> bool:
        """True once the job was asked to stop or passed its processing deadline."""
        return self._ctx.stop_requested

    def raise_if_stopped(self) -> None:
        """Raise `JobStopped` when `stop_requested`."""
        self._ctx.raise_if_stopped()

    def progress(
        self,
        percent: float | None = None,
        biz_step: str | None = None,
        message: str | None = None,
    ) -> None:
        """Report progress from the handler's thread; returns once it is stored."""
        anyio.from_thread.run(self._ctx.progress, percent, biz_step, message)
