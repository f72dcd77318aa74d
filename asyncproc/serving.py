"""uvicorn's server, made to drain the node before it stops answering HTTP.

Plain uvicorn, on SIGTERM / Ctrl-C, first closes its listening sockets, then waits
for open connections, and only then runs the lifespan's shutdown: a grace period
spent there would be spent with the API unreachable (no status, no progress). This
server runs the node's `Drain` first, with the API still answering (in memory mode
calls that start jobs answer 503), and then lets uvicorn shut down as usual.
A second signal ends the grace at once; a second Ctrl-C is uvicorn's force quit.
"""

from __future__ import annotations

import signal
from types import FrameType

import anyio
import uvicorn

from .drain import Drain

__all__ = ["DrainingServer"]

# Once drained, how long open connections (long polls, event streams) may take to end.
CONNECTIONS_GRACE = 3


class DrainingServer(uvicorn.Server):
    """A `uvicorn.Server` that drains `drain` between the exit signal and its shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._hurried = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler; a second SIGTERM / Ctrl-C also ends the grace."""
        if self.should_exit and sig in (signal.SIGTERM, signal.SIGINT):
            self._hurried = True  # only a flag: this runs between any two bytecodes
        super().handle_exit(sig, frame)

    async def main_loop(self) -> None:
        """Serve until told to exit, then drain the node while still serving."""
        await super().main_loop()
        if self.force_exit:
            return
        self.drain.begin()
        counter = 0
        finished = anyio.Event()

        async def finish() -> None:
            await self.drain.finish()
            finished.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(finish)
            while not finished.is_set():
                if self._hurried or self.force_exit:
                    self.drain.hurry()
                with anyio.move_on_after(0.1):
                    await finished.wait()
                counter += 1
                await self.on_tick(counter)  # keeps the Date header and notify going
