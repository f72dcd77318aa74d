"""An `all` node (Redis state, RabbitMQ queue) against a broker that freezes or restarts.

The broker is a PRIVATE RabbitMQ node this module starts on free ports (its own
node name, data and log directories in a temp dir, no plugins) and stops at the
end: the machine's shared broker is never frozen or stopped. Redis is the shared
one, under the test's unique key prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NamedTuple

import anyio
import httpx
import msgspec
import pytest

from asyncproc import JobContext, Registry
from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.contract import delete_prefix
from tests.support import IN_CI, TERMINAL, api_client, free_port, job_finished, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.cluster]

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


class PrivateBroker:
    """A RabbitMQ node of this test module only: start, freeze, thaw, restart its app."""

    def __init__(self, base: Path) -> None:
        self.node = f"asyncproc-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (base / "enabled_plugins").write_text("[].\n")  # no management plugin: no extra port
        (base / "rabbitmq-env.conf").write_text("")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),  # its own Erlang cookie, for it and for rabbitmqctl
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "none"),
        }
        self.output = (base / "server.out").open("wb")
        # Its own session: freezing the process group freezes this node and nothing else.
        self.process = subprocess.Popen(
            [SERVER],
            cwd=base,
            env=self.env,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ctl(self, *args: str, timeout: float = 60) -> None:
        """Run `rabbitmqctl -n <node> args...`, failing the test if it fails."""
        done = subprocess.run(
            [CTL, "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def wait_started(self, timeout: float = 60) -> None:
        """Return once the node runs its broker app."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the private broker exited: {self.process.returncode}")
            done = subprocess.run(
                [CTL, "-n", self.node, "await_startup", "--timeout", "30"],
                env=self.env,
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the private broker did not start: {done.stderr!r}")
            time.sleep(0.5)

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to every process of the node (SIGSTOP freezes it, SIGCONT thaws it)."""
        os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        """Thaw, stop the node, and reap it (killed if it does not stop in 30 s)."""
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)
            subprocess.run(
                [CTL, "-n", self.node, "stop"],
                env=self.env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        self.output.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A private RabbitMQ node for this module's tests."""
    if not (os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)):
        message = f"{SERVER} is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    node = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.wait_started()
        yield node
    finally:
        node.stop()


class Runs:
    """Every run of `faults.work` in this node: (job id, attempt, "start" | "done")."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def starts(self) -> Counter[str]:
        """How many times each job started."""
        return Counter(job_id for job_id, _, what in self.events if what == "start")

    def interrupted(self) -> set[str]:
        """Jobs with a run that started and never finished."""
        started = {(job_id, attempt) for job_id, attempt, what in self.events if what == "start"}
        done = {(job_id, attempt) for job_id, attempt, what in self.events if what == "done"}
        return {job_id for job_id, _ in started - done}


class Work(msgspec.Struct):
    seconds: float = 0.2


def recording_registry(runs: Runs) -> Registry:
    """A kind that records each of its runs in `runs`."""
    registry = Registry()

    @registry.job("faults.work", content=Work)
    async def work(ctx: JobContext, content: Work) -> None:
        """Record the start, sleep, record the end."""
        runs.events.append((ctx.id, ctx.attempt, "start"))
        await anyio.sleep(content.seconds)
        runs.events.append((ctx.id, ctx.attempt, "done"))

    return registry


class Node(NamedTuple):
    """The node under test: its client, the runs of its jobs, its queue."""

    client: httpx.AsyncClient
    runs: Runs
    queue: RabbitMQQueue


@pytest.fixture
async def node(broker: PrivateBroker, redis_url: str, unique_prefix: str) -> AsyncIterator[Node]:
    """An `all` node on the shared Redis and the private broker."""
    runs = Runs()
    settings = load_settings(
        environ={},
        state="redis",
        queue="rabbitmq",
        redis_url=redis_url,
        amqp_url=broker.url,
        key_prefix=unique_prefix,
        concurrency=16,
        scheduler=False,
    )
    queue = RabbitMQQueue.from_settings(settings)
    app = create_app(settings, registry=recording_registry(runs), queue=queue)
    try:
        async with api_client(app) as http:
            yield Node(http, runs, queue)
    finally:
        await delete_prefix(redis_url, unique_prefix)
        async with RabbitMQQueue(broker.url, prefix=unique_prefix) as queue:
            await queue.delete(["default"])


async def enqueue(
    client: httpx.AsyncClient, request_id: str, seconds: float = 0.2, **fields: object
) -> httpx.Response:
    """POST one `faults.work` enqueue with `request_id`, running `seconds`."""
    body = {"content": {"seconds": seconds}, "requestId": request_id, **fields}
    return await client.post("/api/faults.work/enqueue", json=body)


async def test_frozen_broker_answers_503_and_keeps_nothing(
    broker: PrivateBroker, node: Node
) -> None:
    client, runs, _ = node
    warm = await enqueue(client, "warm-up")  # declares the queues before the freeze
    assert warm.status_code == 202, warm.text
    assert (await job_finished(client, "warm-up"))["state"] == "succeeded"
    broker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answers: dict[str, httpx.Response] = {}

        async def refused(request_id: str, fields: dict[str, object]) -> None:
            answers[request_id] = await enqueue(client, request_id, **fields)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refused, "frozen", {})
            tasks.start_soon(refused, "frozen-delayed", {"delay": 0.5})
        print(f"503 after {time.monotonic() - started:.1f} s with the broker frozen")
        for answer in answers.values():
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["backend"] == "rabbitmq"
        # Nothing kept: the job is unknown, so the same request may simply come again.
        for request_id in answers:
            assert (await client.get(f"/api/jobs/{request_id}")).status_code == 404
    finally:
        broker.signal(signal.SIGCONT)
    for request_id, fields in [("frozen", {}), ("frozen-delayed", {"delay": 0.5})]:
        again = await enqueue(client, request_id, **fields)
        assert again.status_code == 202, again.text
        assert (await job_finished(client, request_id, timeout=30))["state"] == "succeeded"
    # A timed-out publish may still reach the queue after the thaw: it runs nothing twice.
    await anyio.sleep(0.5)
    assert runs.starts() == {"warm-up": 1, "frozen": 1, "frozen-delayed": 1}


async def test_broker_restart_loses_no_job(broker: PrivateBroker, node: Node) -> None:
    client, runs, queue = node
    ids = [f"job-{i}" for i in range(500)]  # as issue 8 asks: 500 queued and running
    accepted: set[str] = set()
    refused = 0

    async def submit(chunk: list[str]) -> None:
        nonlocal refused
        for request_id in chunk:
            # Every 10th waits in a delay queue across the restart.
            fields = {"delay": 1.0} if request_id.endswith("7") else {}
            while True:
                answer = await enqueue(client, request_id, 0.5, **fields)
                if answer.status_code in (200, 202):
                    accepted.add(request_id)
                    break
                assert answer.status_code == 503, answer.text
                refused += 1  # nothing kept: the same request is simply sent again
                await anyio.sleep(0.2)

    async def done_runs() -> int:
        return sum(1 for *_, what in runs.events if what == "done")

    async with anyio.create_task_group() as tasks:
        for start in range(0, 250, 25):
            tasks.start_soon(submit, ids[start : start + 25])
        await wait_until(done_runs, lambda n: n >= 20, timeout=60)
        await anyio.to_thread.run_sync(broker.ctl, "stop_app")
        busy = len(runs.starts()) - await done_runs()
        print(f"broker app stopped with {busy} jobs running, {len(accepted)} accepted")
        # The rest are enqueued while the broker is away (503s) and once it is back.
        for start in range(250, 500, 25):
            tasks.start_soon(submit, ids[start : start + 25])

        async def refusals() -> int:
            return refused

        await wait_until(refusals, lambda n: n >= 1, timeout=30)
        await anyio.to_thread.run_sync(broker.ctl, "start_app")

    async def terminal() -> dict[str, str]:
        states: dict[str, str] = {}
        for job_id in ids:
            answer = await client.get(f"/api/jobs/{job_id}")
            if answer.status_code == 200 and answer.json()["state"] in TERMINAL:
                states[job_id] = answer.json()["state"]
        return states

    states = await wait_until(terminal, lambda found: len(found) == len(ids), timeout=90)
    starts = runs.starts()
    duplicates = {job_id for job_id, n in starts.items() if n > 1}
    succeeded = [job_id for job_id, state in states.items() if state == "succeeded"]
    lost = accepted - set(states)
    print(
        f"accepted {len(accepted)} (503 answered {refused} times), terminal {len(states)}, "
        f"succeeded {len(succeeded)}, duplicates {len(duplicates)}, lost {len(lost)}"
    )
    assert accepted == set(ids)
    assert sorted(succeeded) == sorted(ids)
    assert not lost
    assert duplicates <= runs.interrupted()
    # The node did lose the broker (both connections came back).
    assert queue.publisher_link.generation >= 2
    assert queue.consumer_link.generation >= 2
