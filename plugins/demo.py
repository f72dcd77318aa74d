"""The demo kinds of API.md section 9: count, report, fail, sleep, echo, bytes."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import anyio
import msgspec

from asyncproc import BlockingJobContext, JobContext, JobError, Registry, Result

registry = Registry()

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


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


@registry.job("demo.count", content=Count, title="Count to n")
async def count(ctx: JobContext, content: Count) -> dict[str, int]:
    """Counts to n with a progress report per step."""
    n = content.n
    if n == 0:
        await ctx.progress(percent=100.0, biz_step="counting", message="0 of 0")
    for i in range(1, n + 1):
        await anyio.sleep(content.delay)
        await ctx.progress(percent=100.0 * i / n, biz_step="counting", message=f"{i} of {n}")
    return {"counted": n}


@registry.job("demo.report", content=Report, title="CSV report")
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


@registry.job("demo.fail", content=Fail, title="Fail on purpose")
async def fail(ctx: JobContext, content: Fail) -> None:
    """Fails as a reported business error or as an unhandled exception."""
    if content.mode == "reported":
        raise JobError(content.message, tech_msg="demo failure", error_id="demo.failed")
    raise RuntimeError(content.message)


@registry.job("demo.sleep", content=Sleep, title="Blocking sleep")
def sleep(ctx: BlockingJobContext, content: Sleep) -> None:
    """A blocking handler: sleeps in small slices and honours stop."""
    end = time.monotonic() + content.seconds
    ctx.progress(percent=0.0, biz_step="sleeping")
    while (left := end - time.monotonic()) > 0:
        ctx.raise_if_stopped()
        time.sleep(min(0.05, left))
    ctx.raise_if_stopped()


@registry.job("demo.echo", content=dict[str, Any], title="Echo")
async def echo(ctx: JobContext, content: dict[str, Any]) -> dict[str, Any]:
    """Returns the content, the request headers and when the request arrived."""
    return {"content": content, "headers": ctx.headers, "incomingAt": ctx.incoming_at}


@registry.job("demo.bytes", content=Text, title="Bytes")
async def as_bytes(ctx: JobContext, content: Text) -> bytes:
    """Returns the UTF-8 bytes of text."""
    return content.text.encode()
