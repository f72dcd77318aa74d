"""Selections (API.md section 11): a kind whose handler yields `(key, content)` items,
each becoming a job of a target kind.

`selection_handler` turns an item generator into an ordinary job handler: it
starts the items in batches through `JobContext.start_jobs` (`parentId` = the
selection job, `trigger` = `selection`), reports the items done as progress and
returns the counts. An item's `requestId` derives from the selection job and the
key, so a selection that runs again (retried, redelivered) starts no item twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import msgspec

from .context import JobContext
from .hooks import Draft
from .model import Trigger, TriggerType
from .service import EnqueueRequest

__all__ = ["BATCH_SIZE", "Items", "item_request_id", "selection_handler", "selection_key_hook"]

BATCH_SIZE = 100
Items = AsyncIterable[tuple[str, Any]] | Iterable[tuple[str, Any]]
Generator = Callable[[JobContext, Any], Items]


def item_request_id(selection_id: str, key: str) -> str:
    """The requestId of the item `key` of the selection job `selection_id`."""
    digest = hashlib.sha256(f"{selection_id}\0{key}".encode()).hexdigest()
    return f"sel-{digest[:40]}"


def selection_handler(
    name: str,
    target: str,
    generate: Generator,
    total: Callable[[Any], int | None] | None = None,
) -> Callable[[JobContext, Any], Any]:
    """The job handler of selection kind `name`, starting `target` jobs from `generate`."""
    trigger = Trigger(TriggerType.SELECTION, name)
    encode = msgspec.json.encode

    async def run(ctx: JobContext, params: Any) -> dict[str, int]:
        counts = {"created": 0, "existing": 0, "refused": 0}
        expected = total(params) if total is not None else None
        batch: list[EnqueueRequest] = []
        done = 0

        async def flush() -> None:
            nonlocal done
            if not batch:
                return
            outcomes = await ctx.start_jobs(target, batch, trigger=trigger)
            for outcome in outcomes:
                counts[outcome.outcome] += 1
            done += len(batch)
            batch.clear()
            percent = 100.0 * done / expected if expected else None
            await ctx.progress(percent=percent, biz_step="selecting", message=f"{done} items")

        items = generate(ctx, params)
        if isinstance(items, AsyncIterable):
            async for key, content in items:
                batch.append(_request(ctx.id, key, content, encode))
                if len(batch) >= BATCH_SIZE:
                    await flush()
        else:
            for key, content in items:
                batch.append(_request(ctx.id, key, content, encode))
                if len(batch) >= BATCH_SIZE:
                    await flush()
        await flush()
        return counts

    run.__doc__ = generate.__doc__
    return run


def _request(
    selection_id: str, key: str, content: Any, encode: Callable[[Any], bytes]
) -> EnqueueRequest:
    return EnqueueRequest(
        content=msgspec.Raw(encode(content)),
        request_id=item_request_id(selection_id, key),
        key=key,
    )


def selection_key_hook(key_of: Callable[[Any], str]) -> Callable[[Draft], Any]:
    """The before-enqueue hook of a selection kind: its job gets its own key when it has
    none, so that two runs of one selection never overlap (its rule is `active`)."""

    async def hook(draft: Draft) -> None:
        if draft.job.key is not None:
            return
        params = draft.kind.read_content(draft.job.content)
        draft.job = msgspec.structs.replace(draft.job, key=key_of(params))

    return hook
