"""The Queue contract (asyncproc/interfaces.py), run against every implementation.

Only the interface is used, except where the contract names a place outside it:
the dead-letter destination of `reject`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiormq
import anyio
import pytest
from aiormq.exceptions import ChannelNotFoundEntity

from asyncproc.backends.amqp_delay import bucket_for, delay_ms, delay_queue_name
from asyncproc.backends.memory import MemoryQueue
from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.interfaces import Delivery, Queue, StopsTaking
from tests.support import wait_until

ROUTINGS = ("alpha", "beta")
# Long enough for a wrong delivery to show up on loopback; only used to assert
# that something does NOT happen.
QUIET = 0.3


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def queue(
    request: pytest.FixtureRequest, anyio_backend: str, unique_prefix: str
) -> AsyncIterator[Queue]:
    """A started queue; RabbitMQ names are unique to the test and deleted after."""
    if request.param == "memory":
        async with MemoryQueue() as memory:
            await memory.start()
            yield memory
        return
    url = request.getfixturevalue("amqp_url")
    rabbit = RabbitMQQueue(url, prefix=unique_prefix)
    await rabbit.start()
    try:
        yield rabbit
    finally:
        await rabbit.delete(ROUTINGS)
        await rabbit.aclose()


class Taken:
    """What a consumer has received so far, pulled by a background task."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []

    @property
    def ids(self) -> list[str]:
        """The job ids received, in order."""
        return [d.job_id for d in self.deliveries]

    async def count(self, n: int) -> list[Delivery]:
        """Wait until `n` deliveries came (fail after 10 s); the first `n`."""

        async def probe() -> int:
            return len(self.deliveries)

        await wait_until(probe, lambda got: got >= n)
        return self.deliveries[:n]

    async def stays(self, n: int) -> bool:
        """True when, after a quiet moment, exactly `n` deliveries came."""
        await anyio.sleep(QUIET)
        return len(self.deliveries) == n


@asynccontextmanager
async def taking(queue: Queue, routings: list[str], prefetch: int) -> AsyncIterator[Taken]:
    """Consume `routings` in the background for the duration of the block."""
    taken = Taken()
    async with queue.consume(routings, prefetch) as deliveries:
        async with anyio.create_task_group() as tasks:

            async def pull() -> None:
                async for delivery in deliveries:
                    taken.deliveries.append(delivery)

            tasks.start_soon(pull)
            yield taken
            tasks.cancel_scope.cancel()


async def dead_letters(queue: Queue) -> list[str]:
    """The job ids in the dead-letter destination (RabbitMQ: taken off its queue)."""
    if isinstance(queue, MemoryQueue):
        return [job_id for _, job_id in queue.dead_letters]
    assert isinstance(queue, RabbitMQQueue)
    found: list[str] = []
    async with aiormq.connect(queue.url) as connection:
        channel = await connection.channel()
        while True:
            message = await channel.basic_get(queue.dead_letter, no_ack=True)
            if not message.body:
                return found
            found.append(message.body.decode())


@pytest.mark.anyio
async def test_ping_answers(queue: Queue) -> None:
    await queue.ping()


@pytest.mark.anyio
async def test_published_id_is_delivered_with_its_routing(queue: Queue) -> None:
    await queue.publish("job-1", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        (delivery,) = await taken.count(1)
        assert (delivery.job_id, delivery.routing, delivery.redelivered) == (
            "job-1",
            "alpha",
            False,
        )
        await delivery.ack()


@pytest.mark.anyio
async def test_consumer_of_several_routings_gets_each_with_its_routing(queue: Queue) -> None:
    await queue.publish("a1", "alpha")
    await queue.publish("b1", "beta")
    async with taking(queue, list(ROUTINGS), 4) as taken:
        for delivery in await taken.count(2):
            await delivery.ack()
        assert {d.job_id: d.routing for d in taken.deliveries} == {"a1": "alpha", "b1": "beta"}


@pytest.mark.anyio
async def test_routings_are_isolated(queue: Queue) -> None:
    await queue.publish("b1", "beta")
    await queue.publish("b2", "beta")
    await queue.publish("a1", "alpha")
    async with taking(queue, ["alpha"], 10) as alpha:
        (delivery,) = await alpha.count(1)
        assert (delivery.job_id, delivery.routing) == ("a1", "alpha")
        await delivery.ack()
        assert await alpha.stays(1)
        assert await queue.depth("beta") == 2
    async with taking(queue, ["beta"], 10) as beta:
        for delivery in await beta.count(2):
            assert delivery.routing == "beta"
            await delivery.ack()
        assert sorted(beta.ids) == ["b1", "b2"]


@pytest.mark.anyio
async def test_at_most_prefetch_unsettled_deliveries(queue: Queue) -> None:
    ids = [f"job-{i}" for i in range(5)]
    for job_id in ids:
        await queue.publish(job_id, "alpha")
    async with taking(queue, ["alpha"], 2) as taken:
        first, second = await taken.count(2)
        assert await taken.stays(2)
        assert await queue.depth("alpha") == 3
        await first.ack()
        third = (await taken.count(3))[2]
        assert await taken.stays(3)
        await second.ack()
        await third.ack()
        for delivery in (await taken.count(5))[3:]:
            await delivery.ack()
        assert sorted(taken.ids) == ids


@pytest.mark.anyio
async def test_prefetch_is_shared_by_the_routings_of_one_consumer(queue: Queue) -> None:
    for i in range(3):
        await queue.publish(f"a{i}", "alpha")
        await queue.publish(f"b{i}", "beta")
    async with taking(queue, list(ROUTINGS), 2) as taken:
        held = await taken.count(2)
        assert await taken.stays(2)
        for delivery in held:
            await delivery.ack()
        await taken.count(3)


@pytest.mark.anyio
async def test_ack_removes_the_message(queue: Queue) -> None:
    await queue.publish("done", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        (delivery,) = await taken.count(1)
        await delivery.ack()
    await queue.publish("next", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        (delivery,) = await taken.count(1)
        assert (delivery.job_id, delivery.redelivered) == ("next", False)
        await delivery.ack()
        assert await taken.stays(1)
    assert await queue.depth("alpha") == 0


@pytest.mark.anyio
async def test_requeue_redelivers_flagged_redelivered(queue: Queue) -> None:
    await queue.publish("again", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        (first,) = await taken.count(1)
        assert not first.redelivered
        await first.requeue()
        second = (await taken.count(2))[1]
        assert (second.job_id, second.redelivered) == ("again", True)
        await second.ack()


@pytest.mark.anyio
async def test_reject_never_redelivers_and_dead_letters(queue: Queue) -> None:
    await queue.publish("bad", "alpha")
    await queue.publish("good", "alpha")
    async with taking(queue, ["alpha"], 1) as taken:
        (bad,) = await taken.count(1)
        assert bad.job_id == "bad"
        await bad.reject()
        good = (await taken.count(2))[1]
        assert good.job_id == "good"
        await good.ack()
        assert await taken.stays(2)
    async with taking(queue, ["alpha"], 4) as taken:
        assert await taken.stays(0)
    assert await queue.depth("alpha") == 0
    seen: list[str] = []

    async def probe() -> list[str]:
        seen.extend(await dead_letters(queue))
        return seen

    assert await wait_until(probe, lambda ids: "bad" in ids) == ["bad"]


@pytest.mark.anyio
async def test_closing_the_consumer_returns_unsettled_deliveries(queue: Queue) -> None:
    await queue.publish("held", "alpha")
    await queue.publish("finished", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        by_id = {d.job_id: d for d in await taken.count(2)}
        await by_id["finished"].ack()
    async with taking(queue, ["alpha"], 4) as taken:
        (again,) = await taken.count(1)
        assert (again.job_id, again.redelivered) == ("held", True)
        await again.ack()
        assert await taken.stays(1)
    # Settling a delivery of a closed consumer is harmless and changes nothing.
    await by_id["held"].ack()
    assert await queue.depth("alpha") == 0


@pytest.mark.anyio
async def test_depth_counts_waiting_messages(queue: Queue) -> None:
    assert await queue.depth("alpha") == 0
    for i in range(3):
        await queue.publish(f"job-{i}", "alpha")
    await wait_until(lambda: queue.depth("alpha"), lambda n: n == 3)
    assert await queue.depth("beta") == 0
    async with taking(queue, ["alpha"], 1) as taken:
        (delivery,) = await taken.count(1)
        await wait_until(lambda: queue.depth("alpha"), lambda n: n == 2)
        await delivery.ack()


@pytest.mark.anyio
async def test_concurrent_publishes_are_all_delivered(queue: Queue) -> None:
    ids = [f"job-{i}" for i in range(200)]
    async with anyio.create_task_group() as tasks:
        for job_id in ids:
            tasks.start_soon(queue.publish, job_id, "alpha")
    async with taking(queue, ["alpha"], 50) as taken:
        acked = 0
        while acked < len(ids):
            await taken.count(acked + 1)
            for delivery in taken.deliveries[acked:]:
                await delivery.ack()
                acked += 1
        assert sorted(taken.ids) == sorted(ids)


@pytest.mark.anyio
@pytest.mark.rabbitmq
async def test_message_that_is_no_job_id_is_dead_lettered(
    amqp_url: str, unique_prefix: str
) -> None:
    queue = RabbitMQQueue(amqp_url, prefix=unique_prefix)
    await queue.start()
    try:
        await queue.publish("warm-up", "default")  # declares the queue and exchanges
        async with taking(queue, ["default"], 4) as taken:
            async with aiormq.connect(amqp_url) as connection:
                channel = await connection.channel()
                await channel.basic_publish(
                    b"\xff\xfe not utf-8", exchange=queue.exchange, routing_key="default"
                )
            await wait_until(lambda: dead_letters_raw(queue), lambda found: found, timeout=10)
            assert [d.job_id for d in taken.deliveries] == ["warm-up"]
    finally:
        await queue.delete(["default"])
        await queue.aclose()


async def dead_letters_raw(queue: RabbitMQQueue) -> list[bytes]:
    """Raw bodies in the dead-letter queue (taken off it)."""
    found: list[bytes] = []
    async with aiormq.connect(queue.url) as connection:
        channel = await connection.channel()
        while True:
            message = await channel.basic_get(queue.dead_letter, no_ack=True)
            if not message.body:
                return found
            found.append(message.body)


# -- delayed messages ----------------------------------------------------------
# A delay long enough that the checks made while it runs (a quiet moment, a few
# round trips) end well before it on a busy machine.
DELAY = 2.0


@pytest.mark.anyio
async def test_delayed_message_comes_after_its_delay_not_before(queue: Queue) -> None:
    await queue.publish("later", "alpha", delay=DELAY)
    await queue.publish("now", "alpha")
    async with taking(queue, ["alpha"], 4) as taken:
        (now,) = await taken.count(1)
        assert now.job_id == "now"
        await now.ack()
        # "later" was published first and still waits: not delivered, not counted.
        assert await taken.stays(1)
        assert await queue.depth("alpha") == 0
        later = (await taken.count(2))[1]
        # It arrives like a fresh publish: a worker must not take it for a lost run.
        assert (later.job_id, later.routing, later.redelivered) == ("later", "alpha", False)
        await later.ack()
        assert await taken.stays(2)


@pytest.mark.anyio
async def test_delayed_messages_arrive_in_the_order_they_fall_due(queue: Queue) -> None:
    # Published out of order, over different delay ranges and within one range.
    await queue.publish("third", "alpha", delay=1.5)
    await queue.publish("first", "alpha", delay=0.3)
    await queue.publish("second", "alpha", delay=0.9)
    await queue.publish("fourth", "alpha", delay=1.51)
    async with taking(queue, ["alpha"], 10) as taken:
        for delivery in await taken.count(4):
            await delivery.ack()
        assert taken.ids == ["first", "second", "third", "fourth"]


@pytest.mark.anyio
async def test_delay_zero_is_an_ordinary_publish(queue: Queue) -> None:
    await queue.publish("zero", "alpha", delay=0)
    await queue.publish("negative", "alpha", delay=-5)
    await wait_until(lambda: queue.depth("alpha"), lambda n: n == 2)
    async with taking(queue, ["alpha"], 4) as taken:
        for delivery in await taken.count(2):
            await delivery.ack()
        assert taken.ids == ["zero", "negative"]


@pytest.mark.anyio
async def test_delayed_message_survives_its_consumer_going_away(queue: Queue) -> None:
    async with taking(queue, ["alpha"], 4) as first:
        await queue.publish("waiting", "alpha", delay=DELAY)
        assert await first.stays(0)
    async with taking(queue, ["beta"], 4) as other:
        # Nobody consumes alpha now; it falls due meanwhile and waits, ready.
        await wait_until(lambda: queue.depth("alpha"), lambda n: n == 1)
        assert await other.stays(0)
    async with taking(queue, ["alpha"], 4) as second:
        (delivery,) = await second.count(1)
        assert (delivery.job_id, delivery.redelivered) == ("waiting", False)
        await delivery.ack()
    assert await queue.depth("alpha") == 0


@pytest.mark.anyio
async def test_depth_counts_a_delayed_message_once_it_is_due(queue: Queue) -> None:
    await queue.publish("due-later", "alpha", delay=DELAY)
    await queue.publish("ready", "beta")
    await wait_until(lambda: queue.depth("beta"), lambda n: n == 1)
    assert await queue.depth("alpha") == 0
    await wait_until(lambda: queue.depth("alpha"), lambda n: n == 1)
    assert await queue.depth("beta") == 1


@pytest.mark.anyio
async def test_delayed_message_is_settled_like_any_other(queue: Queue) -> None:
    await queue.publish("retry-me", "alpha", delay=0.2)
    await queue.publish("reject-me", "alpha", delay=0.3)
    async with taking(queue, ["alpha"], 1) as taken:
        (first,) = await taken.count(1)
        assert first.job_id == "retry-me"
        await first.requeue()
        again = (await taken.count(2))[1]
        assert (again.job_id, again.redelivered) == ("retry-me", True)
        await again.ack()
        bad = (await taken.count(3))[2]
        assert (bad.job_id, bad.redelivered) == ("reject-me", False)
        await bad.reject()
        assert await taken.stays(3)
    seen: list[str] = []

    async def probe() -> list[str]:
        seen.extend(await dead_letters(queue))
        return seen

    # Its trip through a delay queue does not keep it from the dead letters, once.
    assert await wait_until(probe, lambda ids: "reject-me" in ids) == ["reject-me"]
    assert await queue.depth("alpha") == 0


@pytest.mark.anyio
@pytest.mark.rabbitmq
async def test_delete_removes_the_delay_queues_of_any_publisher(
    amqp_url: str, unique_prefix: str
) -> None:
    publisher = RabbitMQQueue(amqp_url, prefix=unique_prefix)
    delay_queues = [
        delay_queue_name(unique_prefix, routing, bucket_for(delay_ms(delay)))
        for routing, delay in [("alpha", 60.0), ("alpha", 0.5), ("beta", 3600.0)]
    ]
    try:
        await publisher.publish("a-minute", "alpha", delay=60)
        await publisher.publish("half-second", "alpha", delay=0.5)
        await publisher.publish("an-hour", "beta", delay=3600)
        assert [await queue_exists(amqp_url, name) for name in delay_queues] == [True] * 3
    finally:
        await publisher.aclose()
    # Another instance (a test's clean-up, another node) knows nothing of them.
    async with RabbitMQQueue(amqp_url, prefix=unique_prefix) as cleanup:
        await cleanup.delete(ROUTINGS)
    assert [await queue_exists(amqp_url, name) for name in delay_queues] == [False] * 3
    assert not await queue_exists(amqp_url, f"{unique_prefix}jobs.alpha")


async def queue_exists(amqp_url: str, name: str) -> bool:
    """Whether the broker has a queue `name` (a passive declare)."""
    async with aiormq.connect(amqp_url) as connection:
        channel = await connection.channel()
        try:
            await channel.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            return False
        return True


@pytest.mark.anyio
@pytest.mark.rabbitmq
async def test_a_consumer_that_stops_taking_gets_nothing_more(
    amqp_url: str, unique_prefix: str
) -> None:
    """A draining node's consumer: the deliveries in hand still settle, the ones sent but
    not taken go back at once, and nothing more comes to it (another consumer gets it)."""
    rabbit = RabbitMQQueue(amqp_url, prefix=unique_prefix)
    await rabbit.start()
    try:
        for i in range(6):
            await rabbit.publish(f"s-{i}", "default")
        async with rabbit.consume(["default"], 4) as deliveries:
            assert isinstance(deliveries, StopsTaking)
            iterator = aiter(deliveries)
            first = await anext(iterator)
            await wait_until(lambda: rabbit.depth("default"), lambda n: n == 2)
            await deliveries.stop_taking()
            # The three sent but not taken are back in the queue; the one in hand is not.
            await wait_until(lambda: rabbit.depth("default"), lambda n: n == 5)
            await rabbit.publish("s-late", "default")
            async with taking(rabbit, ["default"], 10) as other:
                got = await other.count(6)
                assert first.job_id not in {d.job_id for d in got}
                assert "s-late" in {d.job_id for d in got}
            await first.ack()  # still settles on the open channel
    finally:
        await rabbit.delete(["default"])
        await rabbit.aclose()


# -- take: deliveries without a consumer (external processors) -----------------------


async def test_take_answers_at_once_when_nothing_waits(queue: Queue) -> None:
    assert await queue.take(["alpha"], 5, 0) == []


async def test_take_gets_up_to_count_in_routing_order(queue: Queue) -> None:
    for job_id in ("b1", "b2"):
        await queue.publish(job_id, "beta")
    for job_id in ("a1", "a2"):
        await queue.publish(job_id, "alpha")
    taken = await queue.take(["alpha", "beta"], 3, 0)
    assert [(d.job_id, d.routing) for d in taken] == [
        ("a1", "alpha"),
        ("a2", "alpha"),
        ("b1", "beta"),
    ]
    for delivery in taken:
        await delivery.ack()
    [rest] = await queue.take(["alpha", "beta"], 3, 0)
    assert rest.job_id == "b2"
    await rest.ack()
    assert await queue.take(["alpha", "beta"], 3, 0) == []


async def test_take_waits_for_the_first_message(queue: Queue) -> None:
    async with anyio.create_task_group() as tasks:
        got: list[Delivery] = []

        async def wait() -> None:
            got.extend(await queue.take(["alpha"], 2, 10))

        tasks.start_soon(wait)
        await anyio.sleep(QUIET)
        assert got == []
        await queue.publish("late", "alpha")
    assert [d.job_id for d in got] == ["late"]
    await got[0].ack()


async def test_take_gives_up_after_its_wait(queue: Queue) -> None:
    with anyio.fail_after(5):
        assert await queue.take(["alpha"], 1, QUIET) == []


async def test_a_taken_message_requeued_comes_back_redelivered(queue: Queue) -> None:
    await queue.publish("again", "alpha")
    [first] = await queue.take(["alpha"], 1, 0)
    assert not first.redelivered
    await first.requeue()
    [second] = await queue.take(["alpha"], 1, 5)
    assert second.job_id == "again"
    assert second.redelivered
    await second.ack()


async def test_take_leaves_consumers_alone(queue: Queue) -> None:
    async with taking(queue, ["alpha"], 10) as consumer:
        await queue.publish("x", "alpha")
        [delivery] = await consumer.count(1)
        assert await queue.take(["alpha"], 1, 0) == []
        await delivery.ack()


async def test_a_hint_travels_with_its_job_id_or_not_at_all(queue: Queue) -> None:
    # A queue either hands the publisher's hint to the delivery whole or drops it;
    # the job id is the same either way, through a consumer and through `take`.
    hint = b'node.7\n{"id": "h1", "line": "one\\ntwo"}'
    await queue.publish("h1", "alpha", hint=hint)
    await queue.publish("h2", "alpha", hint=hint)
    await queue.publish("h3", "beta", hint=b"x" * 100_000)  # too big to carry
    async with taking(queue, ["alpha"], 4) as taken:
        (first,) = await taken.count(1)
        assert first.job_id == "h1"
        assert first.hint in (hint, b"")
        await first.requeue()  # a redelivery carries it too
        for delivery in (await taken.count(3))[1:]:
            assert delivery.hint == first.hint
            await delivery.ack()
        assert sorted(taken.ids) == ["h1", "h1", "h2"]
    [big] = await queue.take(["beta"], 1, 0)
    assert big.job_id == "h3"
    assert big.hint == b""
    await big.ack()
    if isinstance(queue, RabbitMQQueue):
        assert first.hint == hint
