"""The `bench.noop` kind: a job that does nothing, so a benchmark measures only asyncproc.

Load it like any plugin: `ASYNCPROC_PLUGINS=asyncproc.plugins.demo,bench.noop_plugin`
with the repository root on `PYTHONPATH`.
"""

from __future__ import annotations

import msgspec

from asyncproc import JobContext, Registry

__all__ = ["KIND", "Noop", "registry"]

KIND = "bench.noop"

registry = Registry()


class Noop(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No input worth the name; `tag` lets a run mark its jobs."""

    tag: str | None = None


@registry.job(KIND, content=Noop, title="No-op (benchmark)")
async def noop(ctx: JobContext, content: Noop) -> None:
    """Returns at once with no result."""
