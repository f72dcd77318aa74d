"""uvicorn's server, made to drain the node before it stops answering HTTP.

Plain uvicorn, on SIGTERM / Ctrl-C, first closes its listening sockets, then waits
for open connections, and only then runs the lifespan's shutdown: a grace period
spent there would be spent with the API unreachable (no status, no progress). This
server runs the node's `Drain` first, with the API still answering (in memory mode
calls that start jobs answer 503), and then lets uvicorn shut down as usual.
A second signal ends the grace at once; a second Ctrl-C is uvicorn's force quit.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from types import FrameType

import anyio
import uvicorn

from .drain import Drain
from .errors import ConfigError

__all__ = ["DrainingServer", "current_directory_on_path", "listening_socket"]

# Once drained, how long open connections (long polls, event streams) may take to end.
CONNECTIONS_GRACE = 3


class DrainingServer(uvicorn.Server):
    """A `uvicorn.Server` that drains `drain` between the exit signal and its shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain, announce: str = "") -> None:
        super().__init__(config)
        self.drain = drain
        self.announce = announce  # printed once the node has started, never before
        self._hurried = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then the announcement (only if it started)."""
        await super().startup(sockets)
        if self.started and self.announce:
            print(self.announce, flush=True)

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


def current_directory_on_path() -> None:
    """Put the current directory first on `sys.path`, as uvicorn does with its app
    dir: `asyncproc serve` and `python app.py` then load plugin modules found there."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or ".") == here for entry in sys.path):
        sys.path.insert(0, here)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port`, before anything says the node is serving
    there; `ConfigError` naming the setting when it cannot be had (the port in use)."""
    # The family as uvicorn picks it for a host name.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise ConfigError("host", f"cannot listen on {host!r}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                "port",
                f"{port} is already in use on {host} (another server listens there); "
                "choose another with --port or ASYNCPROC_PORT",
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                "port", f"no permission to listen on {port} (ports below 1024 need privileges)"
            ) from None
        raise ConfigError("host", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
