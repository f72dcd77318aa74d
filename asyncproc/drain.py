"""A node's graceful shutdown: stop taking jobs, let running ones finish, give back the rest.

`Drain.begin()` starts it (the first SIGTERM / Ctrl-C when served by
`asyncproc serve`, else the lifespan's shutdown); `Drain.finish()` waits until the
worker pool has drained. While a memory-mode node drains, `RefuseNewWork` answers
requests that would start jobs with `503 shutting_down`: the memory queue ends with
the process, so a job accepted now could never run.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from starlette.responses import Response

from .api import json_response
from .interfaces import JobQuery
from .model import JobState
from .service import JobService
from .worker import WorkerPool

__all__ = ["Drain", "RefuseNewWork"]

log = logging.getLogger("asyncproc")

# The calls that start jobs (API.md: enqueue, batches, events, a schedule run now, a
# dead letter's requeue, external processors taking jobs, MyLab's CreateRequest).
# Status, progress, stop and result calls, and processors reporting on jobs they
# hold, are answered as usual while the node drains.
NEW_WORK = re.compile(
    r"^/(api/[^/]+/enqueue(-batch)?|api/events/.+|api/schedules/[^/]+/trigger"
    r"|api/dead-letters/[^/]+/requeue|api/workers/take|(v2/)?requests/?)$"
)


class Drain:
    """The shutdown of one node: its worker pool drains within `grace` seconds.

    `ends_with_process` is true when the queue lives in this process (memory mode):
    new work is then refused while draining, jobs still running after the grace are
    failed (errorId `shutdown`) instead of given back, and the jobs still queued at
    the end are counted in the log as lost.
    """

    def __init__(
        self,
        service: JobService,
        worker: WorkerPool | None,
        *,
        grace: float,
        ends_with_process: bool,
    ) -> None:
        self.service = service
        self.worker = worker
        self.grace = grace
        self.ends_with_process = ends_with_process
        self.draining = False
        self._reported = False

    @property
    def refusing(self) -> bool:
        """Whether requests that start jobs are refused now."""
        return self.draining and self.ends_with_process

    def refusal(self, scope: Any) -> Response | None:
        """The `503 shutting_down` answer to a call that would start a job while this
        memory-mode node drains, else None (asked of every POST before routing)."""
        if not self.refusing or not NEW_WORK.match(scope["path"]):
            return None
        return _refusal(self)

    def begin(self) -> None:
        """Stop taking jobs now; running ones get the grace. Idempotent."""
        if self.draining:
            return
        self.draining = True
        log.info(
            "shutting down: taking no new jobs%s; running jobs get up to %gs to finish",
            " (enqueues answer 503 meanwhile)" if self.ends_with_process else "",
            self.grace,
        )
        if self.worker is not None:
            self.worker.shutdown(give_back=not self.ends_with_process)

    def hurry(self) -> None:
        """End the grace now (a second signal): running jobs are given back at once."""
        self.begin()
        if self.worker is not None:
            self.worker.shutdown(give_back=not self.ends_with_process, grace=0)

    async def finish(self) -> None:
        """Begin if not yet begun, wait until the worker pool has drained, and, in memory
        mode, log how many queued jobs end with the process."""
        self.begin()
        if self.worker is not None:
            await self.worker.wait_stopped()
        if self.ends_with_process and not self._reported:
            self._reported = True
            queued = await self._count_queued()
            if queued:
                log.warning(
                    "shut down with %d job(s) still queued: they are lost with this process "
                    "(the memory queue and state end with it; use Redis + RabbitMQ to keep them)",
                    queued,
                )
            else:
                log.info("shut down with no job queued")

    async def _count_queued(self) -> int:
        count, cursor = 0, None
        while True:
            query = JobQuery(state=JobState.QUEUED, limit=1000, cursor=cursor)
            page = await self.service.store.list_jobs(query)
            count += len(page.items)
            cursor = page.next
            if cursor is None:
                return count


def _refusal(drain: Drain) -> Response:
    body = {
        "error": {
            "code": "shutting_down",
            "message": "this node is shutting down and takes no new jobs; "
            "send the request again once it is back",
        }
    }
    retry_after = str(max(1, math.ceil(drain.grace)))
    return json_response(body, 503, {"Retry-After": retry_after})


class RefuseNewWork:
    """ASGI middleware: while a memory-mode node drains, a call that would start a job
    answers `503` + `Retry-After` with code `shutting_down`; nothing is stored. (The
    app's door, `api.IncomingAt`, asks `new_work_refusal` itself: one layer less per
    request; this class serves an app that wants it on its own.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            drain: Drain | None = getattr(scope["app"].state, "drain", None)
            response = drain.refusal(scope) if drain is not None else None
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
