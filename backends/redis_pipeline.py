"""Pipelined command writes for the Redis StateStore: batching and RESP packing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncproc.errors import BackendUnavailable

__all__ = ["UNAVAILABLE", "Arg", "Pipeliner"]

# A command argument, as redis-py accepts it.
Arg = bytes | str | int | float
# Every way of not reaching Redis.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
# Loop turns a batch waits for more commands before it is written (see `_flush`): in
# the split cluster this took the api node from 8.4 to 14 commands per write and the
# worker from 4.4 to 5.5.
_GATHER_TURNS = 2

_pack_command: Callable[[tuple[Arg, ...]], bytes] | None
try:  # 2-3 times quicker than packing in Python: a third of a node's Redis client work
    import hiredis

    # (hiredis's stub types the argument as a 1-tuple; it takes any number of args.)
    _pack_command = cast("Callable[[tuple[Arg, ...]], bytes]", hiredis.pack_command)
except ImportError:  # pragma: no cover - redis[hiredis] is what the extra installs
    _pack_command = None


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Mark the error seen: a reply nobody waits for must not be reported as lost.
    if not future.cancelled():
        future.exception()


def _fail(batch: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]], exc: BaseException) -> None:
    """Answer every caller still waiting in `batch` with `exc` (or, if it is not an
    error of theirs, such as the flusher's own cancellation, with an outage)."""
    error = exc if isinstance(exc, Exception) else BackendUnavailable("redis", "store closing")
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


class Pipeliner:
    """Sends the commands issued during a few event-loop turns as one pipelined write.

    redis-py's per-command path (pool checkout, retry wrapper, a timeout per reply)
    cost more CPU than Redis spends running our scripts; here a whole batch shares
    one checkout, one write, one timeout. One batch is in flight at a time: what
    arrives meanwhile waits for the next, so a busy node sends fewer, larger writes.
    A batch cut off by a lost connection is sent again (up to `retries` times, with
    a short backoff), which every command we send tolerates: reads are reads, and
    the scripts recognise a write of theirs that was already applied.
    """

    def __init__(self, client: aioredis.Redis, timeout: float, retries: int = 2) -> None:
        self._pool = client.connection_pool
        self._timeout = timeout
        self._retries = retries
        self._pending: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None

    async def call(self, *command: Arg) -> Any:
        """The reply of `command`; raises what redis-py would (a ResponseError too)."""
        return await self.send(*command)

    def send(self, *command: Arg) -> asyncio.Future[Any]:
        """Queue `command` for this turn's write; its reply is the future's (a caller
        that does not wait for it loses nothing but the error, which is dropped)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.append((command, future))
        if self._flusher is None:
            # A task, not a direct send: the commands of this turn's other tasks join it.
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            # Let the callers of the next turns join the batch: deliveries and answers
            # arrive spread over a few turns of the loop, and each write is a system
            # call (on loopback, the receiver's side too). An idle loop turns at once.
            for _ in range(_GATHER_TURNS):
                await asyncio.sleep(0)
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send([entry for entry in batch if not entry[1].done()])
        except BaseException as exc:
            batch, self._pending = self._pending, []
            _fail(batch, exc)
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]) -> None:
        failures = 0
        while batch:
            try:
                await self._exchange(batch)
                return
            except UNAVAILABLE as exc:
                failures += 1
                batch = [entry for entry in batch if not entry[1].done()]
                if failures > self._retries:
                    for _, future in batch:
                        future.set_exception(exc)
                    return
                await asyncio.sleep(min(0.1, 0.01 * 2**failures))
            except BaseException as exc:
                # Cancelled (the store is closing) or a bug: no caller waits forever.
                _fail(batch, exc)
                raise

    async def _exchange(self, batch: list[tuple[tuple[Arg, ...], asyncio.Future[Any]]]) -> None:
        """Write the batch on our connection and hand each reply to its caller."""
        async with asyncio.timeout(self._timeout):
            connection = self._connection
            if connection is None:
                # Held for the store's life: a checkout per batch cost as much as the batch.
                connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                self._connection = connection
            try:
                # send_packed_command reconnects a connection an earlier error closed.
                await connection.send_packed_command(
                    _pack([command for command, _ in batch]), check_health=False
                )
                for _, future in batch:
                    try:
                        # No timeout per reply: the batch has one.
                        reply = await connection.read_response(timeout=math.inf)
                    except ResponseError as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(reply)
            except BaseException:
                # A reply may be half read: this connection is out of step for good.
                await connection.disconnect(nowait=True)
                raise

    async def aclose(self) -> None:
        """Let the batch in flight finish (up to the timeout), then give the connection back."""
        flusher = self._flusher
        if flusher is not None:
            _, pending = await asyncio.wait({flusher}, timeout=self._timeout)
            for task in pending:
                task.cancel()
                await asyncio.wait({task})
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


def _pack(commands: list[tuple[Arg, ...]]) -> bytes:
    """The commands in the Redis protocol (RESP), as one buffer: hiredis's C packer
    (installed with `redis[hiredis]`), else `_pack_python`."""
    if _pack_command is None:
        return _pack_python(commands)
    if len(commands) == 1:
        return _pack_command(commands[0])
    return b"".join([_pack_command(command) for command in commands])


def _pack_python(commands: list[tuple[Arg, ...]]) -> bytes:
    """`_pack` in Python, byte for byte what hiredis packs."""
    parts: list[bytes] = []
    add = parts.append
    for command in commands:
        add(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif not isinstance(arg, bytes):
                arg = repr(arg).encode()  # int or float, as redis-py writes them
            add(b"$%d\r\n" % len(arg))
            add(arg)
            add(b"\r\n")
    return b"".join(parts)
