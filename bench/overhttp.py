"""Modes (b) and (c): a real uvicorn server process driven over loopback.

(b) runs `python app.py` with the bench plugin loaded through the `plugins`
setting, (c) the bare Starlette endpoint of `bench/ceiling.py`; `wrk` and
`enqueue.lua` drive both the same way. The paced mode uses a small HTTP/1.1
client of its own (keep-alive connections, one request in flight on each):
wrk cannot pace, and at a few thousand requests a second this client is far
from being the bottleneck.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import anyio
import httpx
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from bench import noop_plugin
from bench.figures import Figures, Timing, timing_of
from bench.inprocess import Backends, clean

__all__ = ["Load", "run_ceiling", "run_http_burst", "run_http_paced"]

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "enqueue.lua"
HOST = "127.0.0.1"
ENQUEUE_PATH = f"/api/{noop_plugin.KIND}/enqueue"
BODY = b'{"content":{}}'


@dataclass(frozen=True)
class Load:
    """How wrk loads the server: threads, connections, a bound on time."""

    threads: int = 1
    connections: int = 32
    max_seconds: int = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server process on a free loopback port, ready once `/health` answers."""

    def __init__(self, command: Sequence[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.helpers: list[Server] = []  # other nodes of a split setup
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll `/health`; raise with the server's output when it dies or never answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout}s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """CPU time the server (and its helper nodes, if split) has used."""
        return _cpu_seconds(self.process.pid) + sum(h.cpu_seconds() for h in self.helpers)

    def output(self) -> str:
        """What the server printed (the tail)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Interrupt (graceful shutdown), then kill if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@contextlib.contextmanager
def asyncproc_server(backends: Backends, *, worker: bool = True) -> Iterator[Server]:
    """`python app.py` with the bench plugin, on a fresh port and key prefix (split: an
    `api` node, and a `worker` node unless `worker=False`)."""
    port = _free_port()
    prefix = f"asyncproc-bench-{uuid.uuid4().hex[:10]}:"
    env = _env(
        {
            "ASYNCPROC_HOST": HOST,
            "ASYNCPROC_PORT": str(port),
            "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo,bench.noop_plugin",
            "ASYNCPROC_STATE": backends.state,
            "ASYNCPROC_QUEUE": backends.queue,
            "ASYNCPROC_KEY_PREFIX": prefix,
            "ASYNCPROC_CONCURRENCY": str(backends.concurrency),
        }
    )
    workers: list[Server] = []
    if backends.split:
        env["ASYNCPROC_ROLE"] = "api"
    server = Server([sys.executable, "app.py"], env, port)
    try:
        server.wait_ready()
        if backends.split and worker:
            worker_port = _free_port()
            worker_env = {**env, "ASYNCPROC_ROLE": "worker", "ASYNCPROC_PORT": str(worker_port)}
            workers.append(Server([sys.executable, "app.py"], worker_env, worker_port))
            workers[0].wait_ready()
        server.helpers = workers
        yield server
    finally:
        for process in [*workers, server]:
            process.stop()
        anyio.run(clean, backends.settings(prefix))


@contextlib.contextmanager
def ceiling_server(corked: bool = True) -> Iterator[Server]:
    """The bare Starlette endpoint, served like the app (`corked=False`: with
    uvicorn's own HTTP protocol)."""
    port = _free_port()
    code = f"from bench.ceiling import serve; serve({HOST!r}, {port}, {corked!r})"
    server = Server([sys.executable, "-c", code], _env({}), port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class WrkResult:
    """What wrk reported."""

    requests: int
    seconds: float
    rate: float
    bad: int
    cpu: float  # wrk's own CPU use, in cores


def run_wrk(url: str, stop_after: int, load: Load, body: bytes = BODY) -> WrkResult:
    """Drive `url` with wrk, POSTing `body`, until `stop_after` answers (spread over its
    threads) or time out."""
    per_thread = -(-stop_after // load.threads) if stop_after else 0
    env = _env({"BENCH_STOP_AFTER": str(per_thread), "BENCH_BODY": body.decode()})
    command = [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{load.max_seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert wrk.stderr is not None
    finished_threads = 0
    for line in wrk.stderr:
        if line.strip() == "thread done":
            finished_threads += 1
            if finished_threads == load.threads:
                wrk.send_signal(signal.SIGINT)
                break
    out, err = wrk.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{out}\n{err}")
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}\n{err}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
    requests, seconds = int(match.group(1)), float(match.group(2)) * unit
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds
    return WrkResult(requests, seconds, requests / seconds, bad, cpu)


# -- reading the jobs back -----------------------------------------------------


class _Row(msgspec.Struct, rename="camel"):
    id: str
    state: str
    version: int
    created_at: datetime
    finished_at: datetime | None


class _Page(msgspec.Struct):
    items: list[_Row]
    next: str | None


_page = msgspec.json.Decoder(_Page)
_row = msgspec.json.Decoder(_Row)
TERMINAL = frozenset({"succeeded", "failed", "stopped"})


def _list(client: httpx.Client, **params: str | int) -> _Page:
    answer = client.get("/api/jobs", params={"kind": noop_plugin.KIND, **params})
    answer.raise_for_status()
    return _page.decode(answer.content)


def wait_finished(client: httpx.Client, timeout: float) -> None:
    """Wait (long poll) for the newest job, then until none is queued or running."""
    deadline = time.monotonic() + timeout
    newest = _list(client, limit=1).items
    if newest:
        row = newest[0]
        while row.state not in TERMINAL and time.monotonic() < deadline:
            answer = client.get(f"/api/jobs/{row.id}", params={"wait": 30, "since": row.version})
            row = _row.decode(answer.content)
    while time.monotonic() < deadline:
        if not _list(client, state="queued", limit=1).items and not (
            _list(client, state="running", limit=1).items
        ):
            return
        time.sleep(0.2)
    raise TimeoutError(f"jobs still unfinished after {timeout}s")


def read_timings(client: httpx.Client) -> list[Timing]:
    """Every bench job's createdAt / finishedAt / state, page by page."""
    timings: list[Timing] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = _list(client, **params)
        timings.extend(Timing(r.created_at, r.finished_at, r.state) for r in page.items)
        if page.next is None:
            return timings
        cursor = page.next


# -- the modes ------------------------------------------------------------------


def service_pids(backends: Backends) -> dict[str, int]:
    """The server processes the cluster backends run in (the local redis-server on port
    6379, RabbitMQ's Erlang VM), by name, for their CPU per job; {} with memory."""
    pids: dict[str, int] = {}
    wanted = {"redis-server": backends.state == "redis", "rabbitmq": backends.queue == "rabbitmq"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if wanted["redis-server"] and command.startswith("redis-server") and ":6379" in command:
            pids.setdefault("redis-server", int(entry.name))
        elif wanted["rabbitmq"] and "beam.smp" in command:
            # The shared node, named `rabbit` (test brokers of their own have other names).
            named = re.search(r"-s?name (\S+)", command)
            if named is None or named.group(1).split("@")[0] == "rabbit":
                pids.setdefault("rabbitmq", int(entry.name))
    return pids


def run_http_burst(backends: Backends, jobs: int, load: Load, *, timeout: float = 300) -> Figures:
    """(b): wrk enqueues `jobs` no-op jobs; figures from the job records once all finished.
    The CPU each process spent (our nodes; redis-server and RabbitMQ with the cluster
    backends) is read from /proc before and after, and printed per job."""
    with asyncproc_server(backends) as server:
        processes = {"api" if backends.split else "node": server.process.pid}
        for helper in server.helpers:
            processes["worker"] = helper.process.pid
        processes.update(service_pids(backends))
        before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
        wrk = run_wrk(server.base_url + ENQUEUE_PATH, jobs, load)
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            wait_finished(client, timeout)
            spent = {name: _cpu_seconds(pid) - before[name] for name, pid in processes.items()}
            timings = read_timings(client)
    shape = " api+worker" if backends.split else ""
    figures = timing_of(f"(b) http burst {backends.state}/{backends.queue}{shape}", timings)
    ours = sum(v for k, v in spent.items() if k in {"api", "worker", "node"})
    per_job = {name: cpu / max(len(timings), 1) * 1e6 for name, cpu in spent.items()}
    figures.notes += [
        f"wrk {wrk.rate:,.0f} req/s",
        f"non-2xx/errors {wrk.bad}",
        f"server cpu {ours / max(figures.seconds, 1e-9):.0%} = "
        f"{ours / max(len(timings), 1) * 1e6:.0f} us/job",
        "cpu/job " + ", ".join(f"{name} {us:.0f} us" for name, us in per_job.items()),
        f"wrk cpu {wrk.cpu:.0%}",
    ]
    return figures


def run_ceiling(jobs: int, load: Load, corked: bool = True) -> Figures:
    """(c): the same wrk run against the bare Starlette endpoint; `corked=False`:
    served with uvicorn's own HTTP protocol, as the ceiling was before
    `asyncproc.corked_http` (printed as (c0), for reference)."""
    with ceiling_server(corked) as server:
        cpu = server.cpu_seconds()
        wrk = run_wrk(server.base_url + ENQUEUE_PATH, jobs, load)
        cpu = server.cpu_seconds() - cpu
    name = "(c) ceiling bare starlette" if corked else "(c0) bare starlette, uvicorn's protocol"
    figures = Figures(name, seconds=wrk.seconds, rate=wrk.rate)
    figures.notes += [
        f"{wrk.requests:,} requests",
        f"non-2xx/errors {wrk.bad}",
        f"server cpu {cpu / wrk.seconds:.0%} = {cpu / wrk.requests * 1e6:.0f} us/req",
        f"wrk cpu {wrk.cpu:.0%}",
    ]
    return figures


class _Connection:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)


async def _pace(port: int, rate: float, duration: float, connections: int) -> tuple[int, float]:
    """POST enqueue at `rate`/s for `duration` s; (answers not 202, offered rate)."""
    request = (
        f"POST {ENQUEUE_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    total = max(1, round(rate * duration))
    idle_send, idle = anyio.create_memory_object_stream[_Connection](connections)
    opened = [_Connection(await anyio.connect_tcp(HOST, port)) for _ in range(connections)]
    for connection in opened:
        idle_send.send_nowait(connection)
    bad = 0

    async def post(connection: _Connection) -> None:
        nonlocal bad
        await connection.stream.send(request)
        head = await connection.reader.receive_until(b"\r\n\r\n", 65536)
        if head[9:12] != b"202":
            bad += 1
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if length and int(length.group(1)):
            await connection.reader.receive_exactly(int(length.group(1)))
        idle_send.send_nowait(connection)

    try:
        async with anyio.create_task_group() as tasks:
            started = anyio.current_time()
            for i in range(total):
                delay = started + i / rate - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                tasks.start_soon(post, await idle.receive())
            offered = total / max(anyio.current_time() - started, 1e-9)
    finally:
        for connection in opened:
            await connection.stream.aclose()
    return bad, offered


def run_http_paced(
    backends: Backends, rate: float, duration: float, *, connections: int = 16, timeout: float = 300
) -> Figures:
    """(b) paced: offer `rate` enqueues/s over HTTP; latency from the job records."""
    with asyncproc_server(backends) as server:
        bad, offered = anyio.run(_pace, server.port, rate, duration, connections)
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            wait_finished(client, timeout)
            timings = read_timings(client)
    shape = " api+worker" if backends.split else ""
    figures = timing_of(
        f"(b) http paced {backends.state}/{backends.queue}{shape}",
        timings,
        offered=max(1, round(rate * duration)),
    )
    figures.rate = offered
    figures.notes += [f"offered {rate:,.0f}/s for {duration:g}s", f"non-202 {bad}"]
    return figures
