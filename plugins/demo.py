"""The demo kinds of API.md section 9: count, report, fail, sleep, echo, bytes, keyed, once,
select, flaky, saga, limited, page."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import msgspec

from asyncproc import (
    BlockingJobContext,
    JobContext,
    JobError,
    Registry,
    Result,
    RetryableJobError,
)
from asyncproc.registry import Compensation

registry = Registry()

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


def examples(content: Any, *values: Any) -> Any:
    """`content` with example values in its JSON Schema (`/api/kinds`, the OpenAPI
    document): the page's New job form starts from the first one."""
    return Annotated[content, msgspec.Meta(examples=list(values))]


class Count(msgspec.Struct, forbid_unknown_fields=True):
    """Count to `n`, sleeping `delay` seconds per step."""

    n: NonNegativeInt
    delay: NonNegativeFloat = 0.1


class Report(msgspec.Struct, forbid_unknown_fields=True):
    """Render a CSV of `rows` rows, `delay` seconds per row."""

    rows: NonNegativeInt
    delay: NonNegativeFloat = 0.01


class Fail(msgspec.Struct, forbid_unknown_fields=True):
    """Fail on purpose: `reported` (a JobError) or `unhandled` (a RuntimeError)."""

    mode: Literal["reported", "unhandled"]
    message: str


class Sleep(msgspec.Struct, forbid_unknown_fields=True):
    """Block a worker thread for `seconds`."""

    seconds: NonNegativeFloat


class Text(msgspec.Struct, forbid_unknown_fields=True):
    """Text to return as bytes."""

    text: str


@registry.job("demo.count", content=examples(Count, {"n": 30, "delay": 0.1}), title="Count to n")
async def count(ctx: JobContext, content: Count) -> dict[str, int]:
    """Counts to n with a progress report per step."""
    n = content.n
    if n == 0:
        await ctx.progress(percent=100.0, biz_step="counting", message="0 of 0")
    for i in range(1, n + 1):
        await anyio.sleep(content.delay)
        await ctx.progress(percent=100.0 * i / n, biz_step="counting", message=f"{i} of {n}")
    return {"counted": n}


@registry.job(
    "demo.report", content=examples(Report, {"rows": 200, "delay": 0.01}), title="CSV report"
)
async def report(ctx: JobContext, content: Report) -> Result:
    """Queries, then renders a CSV of `rows` squares."""
    await ctx.progress(percent=0.0, biz_step="querying")
    await anyio.sleep(content.delay)
    lines = ["id,value\n"]
    rows = content.rows
    for i in range(1, rows + 1):
        await anyio.sleep(content.delay)
        lines.append(f"{i},{i * i}\n")
        await ctx.progress(
            percent=100.0 * i / rows, biz_step="rendering", message=f"row {i} of {rows}"
        )
    if rows == 0:
        await ctx.progress(percent=100.0, biz_step="rendering")
    return Result("".join(lines), "text/csv")


@registry.job(
    "demo.fail",
    content=examples(Fail, {"mode": "reported", "message": "The input was refused."}),
    title="Fail on purpose",
)
async def fail(ctx: JobContext, content: Fail) -> None:
    """Fails as a reported business error or as an unhandled exception."""
    if content.mode == "reported":
        raise JobError(content.message, tech_msg="demo failure", error_id="demo.failed")
    raise RuntimeError(content.message)


@registry.job("demo.sleep", content=examples(Sleep, {"seconds": 2}), title="Blocking sleep")
def sleep(ctx: BlockingJobContext, content: Sleep) -> None:
    """A blocking handler: sleeps in small slices and honours stop."""
    end = time.monotonic() + content.seconds
    ctx.progress(percent=0.0, biz_step="sleeping")
    while (left := end - time.monotonic()) > 0:
        ctx.raise_if_stopped()
        time.sleep(min(0.05, left))
    ctx.raise_if_stopped()


@registry.job("demo.echo", content=examples(dict[str, Any], {"hello": "world"}), title="Echo")
async def echo(ctx: JobContext, content: dict[str, Any]) -> dict[str, Any]:
    """Returns the content, the request headers and when the request arrived."""
    return {"content": content, "headers": ctx.headers, "incomingAt": ctx.incoming_at}


@registry.job("demo.bytes", content=examples(Text, {"text": "Hello, world"}), title="Bytes")
async def as_bytes(ctx: JobContext, content: Text) -> bytes:
    """Returns the UTF-8 bytes of text."""
    return content.text.encode()


class Keyed(msgspec.Struct, forbid_unknown_fields=True):
    """Sleep `seconds` for the job's key."""

    seconds: NonNegativeFloat = 0.0


async def _sleep_for_key(ctx: JobContext, seconds: float) -> dict[str, str | None]:
    """Sleep in slices, percent by elapsed time; a stop cancels the sleep."""
    step = min(0.1, seconds) if seconds > 0 else 0.0
    elapsed = 0.0
    await ctx.progress(percent=0.0, biz_step="working", message=ctx.key)
    while elapsed < seconds:
        pause = min(step, seconds - elapsed)
        await anyio.sleep(pause)
        elapsed += pause
        await ctx.progress(percent=100.0 * elapsed / seconds)
    return {"key": ctx.key}


@registry.job(
    "demo.keyed", content=examples(Keyed, {"seconds": 3}), title="One per key", unique="active"
)
async def keyed(ctx: JobContext, content: Keyed) -> dict[str, str | None]:
    """At most one queued or running job per key; sleeps `seconds`."""
    return await _sleep_for_key(ctx, content.seconds)


@registry.job(
    "demo.once", content=examples(Keyed, {"seconds": 1}), title="Once per key", unique="once"
)
async def once(ctx: JobContext, content: Keyed) -> dict[str, str | None]:
    """At most one succeeded job per key until released; sleeps `seconds`."""
    return await _sleep_for_key(ctx, content.seconds)


class Select(msgspec.Struct, forbid_unknown_fields=True):
    """Select `count` keys `<prefix>-<i>` for demo.keyed jobs sleeping `seconds`."""

    count: Annotated[int, msgspec.Meta(ge=0, le=10000)]
    prefix: str = "k"
    seconds: NonNegativeFloat = 0.0


@registry.selection(
    "demo.select",
    target="demo.keyed",
    content=examples(Select, {"count": 5, "prefix": "k", "seconds": 2}),
    total=lambda params: params.count,
    title="Select keys",
)
async def select(ctx: JobContext, params: Select) -> AsyncIterator[tuple[str, dict[str, float]]]:
    """Starts a demo.keyed job for each of `count` keys."""
    for i in range(1, params.count + 1):
        yield f"{params.prefix}-{i}", {"seconds": params.seconds}


class Flaky(msgspec.Struct, forbid_unknown_fields=True):
    """Fail (retryably) on the first `failures` attempts, then succeed."""

    failures: NonNegativeInt


@registry.job(
    "demo.flaky",
    content=examples(Flaky, {"failures": 1}),
    title="Flaky",
    retries=3,
    retry_delay=0.2,
)
async def flaky(ctx: JobContext, content: Flaky) -> dict[str, int]:
    """Fails with a temporary error on attempts 1..failures, then succeeds."""
    if ctx.attempt <= content.failures:
        raise RetryableJobError(
            "temporary failure", tech_msg=f"attempt {ctx.attempt}", error_id="demo.transient"
        )
    return {"attempts": ctx.attempt}


class Saga(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Durable steps step-1..step-<steps>; fail for good at `failAt`, crash once at `crashAt`."""

    steps: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    fail_at: int | None = None
    crash_at: int | None = None
    delay: NonNegativeFloat = 0.05


async def _undo(ctx: JobContext, compensation: Compensation) -> dict[str, list[str]]:
    """Undoes the failed saga's completed steps, newest first."""
    undone = list(reversed(compensation.steps))
    for name in undone:
        await ctx.progress(biz_step="undoing", message=name)
    return {"undone": undone}


@registry.job(
    "demo.saga",
    content=examples(Saga, {"steps": 3, "delay": 1}),
    title="Saga",
    retries=2,
    retry_delay=0.1,
    compensate=_undo,
)
async def saga(ctx: JobContext, content: Saga) -> dict[str, Any]:
    """Runs durable steps in order; a final failure is compensated by demo.saga.compensate."""
    ran: dict[str, int] = {}
    for i in range(1, content.steps + 1):
        name = f"step-{i}"
        await ctx.progress(percent=100.0 * (i - 1) / content.steps, biz_step=name)
        if i == content.fail_at:
            raise JobError(
                f"{name} failed", tech_msg="demo saga failure", error_id="demo.saga_failed"
            )
        if i == content.crash_at and ctx.attempt == 1:
            raise RetryableJobError(f"crashed at {name}", error_id="demo.saga_crashed")

        async def work(attempt: int = ctx.attempt) -> dict[str, int]:
            await anyio.sleep(content.delay)
            return {"ranOnAttempt": attempt}

        stored = await ctx.step(name, work)
        ran[name] = stored["ranOnAttempt"]
    return {"done": list(ran), "ranOnAttempt": ran}


class Limited(msgspec.Struct, forbid_unknown_fields=True):
    """Sleep `seconds`; at most two such jobs run at once across all nodes."""

    seconds: NonNegativeFloat = 0.5


@registry.job(
    "demo.limited", content=examples(Limited, {"seconds": 2}), title="Limited", max_concurrency=2
)
async def limited(ctx: JobContext, content: Limited) -> None:
    """Sleeps `seconds`; `max_concurrency` 2 across all nodes holds the rest in queued."""
    await ctx.progress(percent=0.0, biz_step="working")
    await anyio.sleep(content.seconds)


class Page(msgspec.Struct, forbid_unknown_fields=True):
    """An HTML document to return as the result."""

    html: str


@registry.job("demo.page", content=examples(Page, {"html": "<h1>Hello</h1>"}), title="HTML page")
async def page(ctx: JobContext, content: Page) -> Result:
    """Returns the HTML as `text/html`: served as an attachment, never run by the page."""
    return Result(content.html, "text/html; charset=utf-8")
