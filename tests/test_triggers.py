"""Event triggers over HTTP and message triggers over RabbitMQ (API.md section 12)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiormq
import anyio
import httpx
import msgspec
import pytest
from openapi_spec_validator import validate
from pamqp import commands as spec

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.config import Settings, load_settings
from asyncproc.errors import BackendUnavailable
from asyncproc.interfaces import Created, JobQuery
from asyncproc.model import Job, OnConflict, Uniqueness
from asyncproc.plugins.triggers import Triggers, request_id
from asyncproc.server import create_app
from tests.support import api_client, free_port, live_server, wait_until
from tests.test_rabbitmq_reconnect import close_connections, rabbitmqctl

pytestmark = pytest.mark.anyio

PAID = {
    "name": "paid",
    "kind": "demo.echo",
    "event": "order.paid",
    "id_field": "eventId",
    "content_field": "payload",
}
HOLD = {
    "name": "hold",
    "kind": "demo.keyed",
    "event": "order.paid",
    "id_field": "eventId",
    "key_field": "orderId",
    "content_field": "hold",
}
COUNT = {"name": "count", "kind": "demo.count", "event": "count"}


def settings_with(*triggers: dict[str, Any], **values: Any) -> Settings:
    return load_settings(environ={}, triggers=list(triggers), **{"shutdown_grace": 0.2, **values})


async def post(client: httpx.AsyncClient, event: str, body: Any) -> httpx.Response:
    return await client.post(f"/api/events/{event}", json=body)


async def finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async def status() -> dict[str, Any]:
        answer: dict[str, Any] = (await client.get(f"/api/jobs/{job_id}")).json()
        return answer

    return await wait_until(status, lambda s: s["state"] in {"succeeded", "failed", "stopped"})


# -- HTTP events ------------------------------------------------------------------------


async def test_an_event_with_an_id_starts_one_job_with_the_mapped_content() -> None:
    async with api_client(create_app(settings_with(PAID))) as client:
        body = {"eventId": "e-1", "payload": {"order": 7}, "other": "ignored"}
        first = await post(client, "order.paid", body)
        again = await post(client, "order.paid", body)
        assert first.status_code == again.status_code == 200
        [made] = first.json()["items"]
        [known] = again.json()["items"]
        assert (made["trigger"], made["outcome"], made["error"]) == ("paid", "created", None)
        assert made["status"]["trigger"] == {"type": "event", "name": "paid"}
        assert (known["outcome"], known["status"]["id"]) == ("existing", made["status"]["id"])
        assert made["status"]["id"] == request_id("paid", "e-1")
        status = await finished(client, made["status"]["id"])
        assert status["state"] == "succeeded"
        result = (await client.get(f"/api/jobs/{status['id']}/result")).json()
        assert result["content"] == {"order": 7}
        assert result["headers"]["content-type"] == "application/json"


async def test_an_event_without_an_id_starts_a_job_each_time() -> None:
    async with api_client(create_app(settings_with(PAID))) as client:
        answers = [await post(client, "order.paid", {"payload": {"n": 1}}) for _ in range(2)]
        items = [a.json()["items"][0] for a in answers]
        assert [i["outcome"] for i in items] == ["created", "created"]
        assert items[0]["status"]["id"] != items[1]["status"]["id"]


async def test_bad_content_is_refused_with_the_error_an_enqueue_would_give() -> None:
    async with api_client(create_app(settings_with(COUNT))) as client:
        answer = await post(client, "count", {"n": "many"})
        direct = await client.post("/api/demo.count/enqueue", json={"content": {"n": "many"}})
        assert answer.status_code == 200
        assert direct.status_code == 422
        [item] = answer.json()["items"]
        assert (item["outcome"], item["status"]) == ("refused", None)
        assert item["error"] == direct.json()["error"]
        listed = (await client.get("/api/jobs", params={"kind": "demo.count"})).json()
        assert listed["items"] == []


async def test_unknown_events_and_bodies_that_are_no_json_object() -> None:
    async with api_client(create_app(settings_with(COUNT))) as client:
        unknown = await post(client, "nobody.listens", {"n": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"
        broken = await client.post(
            "/api/events/count", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert (await post(client, "count", [1, 2])).status_code == 400
    # A node with no triggers at all answers 404 too, and lists none.
    async with api_client(create_app(load_settings(environ={}))) as client:
        assert (await post(client, "count", {"n": 1})).status_code == 404
        assert (await client.get("/api/triggers")).json() == {"items": []}


async def test_several_triggers_on_one_event_each_answer_with_their_key() -> None:
    async with api_client(create_app(settings_with(PAID, HOLD))) as client:
        body = {"eventId": "e-1", "orderId": 42, "payload": {}, "hold": {"seconds": 30}}
        first = (await post(client, "order.paid", body)).json()["items"]
        assert [(i["trigger"], i["outcome"]) for i in first] == [
            ("paid", "created"),
            ("hold", "created"),
        ]
        holder = first[1]["status"]
        assert (holder["kind"], holder["key"]) == ("demo.keyed", "42")
        # Another event for the same order: demo.keyed allows one active job per key.
        second = (await post(client, "order.paid", {**body, "eventId": "e-2"})).json()["items"]
        assert [(i["trigger"], i["outcome"]) for i in second] == [
            ("paid", "created"),
            ("hold", "refused"),
        ]
        assert second[1]["error"]["code"] == "key_conflict"
        assert second[1]["error"]["jobId"] == holder["id"]
        # A payload without the key field is refused, the other trigger still starts.
        third = (
            await post(client, "order.paid", {"eventId": "e-3", "payload": {}, "hold": {}})
        ).json()
        assert [i["outcome"] for i in third["items"]] == ["created", "refused"]
        assert "orderId" in third["items"][1]["error"]["message"]
        await client.post(f"/api/jobs/{holder['id']}/stop")


async def test_trigger_list_counts_what_this_node_received() -> None:
    async with api_client(create_app(settings_with(PAID, HOLD, COUNT))) as client:
        body = {"eventId": "e-1", "orderId": "o-1", "payload": {}, "hold": {}}
        await post(client, "order.paid", body)
        await post(client, "order.paid", body)
        await post(client, "count", {"n": -1})
        listed = (await client.get("/api/triggers")).json()["items"]
    by_name = {t["name"]: t for t in listed}
    assert [t["name"] for t in listed] == ["count", "hold", "paid"]
    assert by_name["paid"] == {
        "name": "paid",
        "kind": "demo.echo",
        "event": "order.paid",
        "queue": None,
        "received": 2,
        "created": 1,
        "existing": 1,
        "refused": 0,
    }
    assert [by_name["hold"][c] for c in ("received", "created", "existing", "refused")] == [
        2,
        1,
        1,
        0,
    ]
    assert [by_name["count"][c] for c in ("received", "created", "existing", "refused")] == [
        1,
        0,
        0,
        1,
    ]


async def test_a_trigger_of_an_unknown_kind_stops_start_up(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'port = {free_port()}\n[[triggers]]\nname = "t"\nkind = "no.such.kind"\nevent = "e"\n'
    )
    with anyio.fail_after(60):
        ended = await anyio.run_process(
            [sys.executable, "-m", "asyncproc.cli", "serve", "--config", str(config)], check=False
        )
    # One line naming the key, exit code 2, as for any bad setting.
    assert ended.returncode == 2
    assert "triggers[0].kind" in ended.stderr.decode()
    assert "Traceback" not in ended.stderr.decode()


async def test_the_routes_are_in_the_openapi_document() -> None:
    async with api_client(create_app(settings_with(PAID))) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    assert "post" in document["paths"]["/api/events/{event}"]
    assert "get" in document["paths"]["/api/triggers"]


def test_request_ids_are_valid_and_tell_triggers_and_events_apart() -> None:
    assert request_id("paid", "e-1") == "paid:e-1"
    odd = [request_id("paid", "a b/c"), request_id("a:b", "c"), request_id("a", "b:c")]
    odd.append(request_id("paid", "x" * 200))
    assert len(set(odd)) == len(odd)
    for value in odd:
        assert 1 <= len(value) <= 128
        assert all(c.isalnum() or c in "._:-" for c in value)


async def test_a_message_is_known_by_its_id_its_id_field_or_else_its_body() -> None:
    queued = {"name": "orders", "kind": "demo.echo", "queue": "unused", "id_field": "eventId"}
    app = create_app(load_settings(environ={}))
    async with app.router.lifespan_context(app):
        # The node runs no consumer here: the mapping is tried on its own.
        triggers = Triggers(settings_with(queued), app.state.service)
        outcomes = [
            await triggers.on_message("orders", body, message_id, {})
            for body, message_id in [
                (b'{"a": 1}', None),
                (b'{"a": 1}', None),  # the same body without ids: the same message
                (b'{"a": 2}', None),
                (b'{"eventId": "e-1"}', None),
                (b'{"eventId": "e-1", "again": true}', None),  # the same event id
                (b'{"eventId": "e-1"}', "m-1"),  # the AMQP message_id comes first
                (b"[1]", None),
            ]
        ]
        listed = await app.state.service.list_jobs(JobQuery(kind="demo.echo"))
    assert outcomes[:6] == [None] * 6
    assert outcomes[6] is not None
    assert "not a JSON object" in outcomes[6]
    ids = {job.id for job in listed.items}
    assert len(ids) == 4
    assert {request_id("orders", "e-1"), request_id("orders", "m-1")} <= ids
    assert all(job.trigger.name == "orders" for job in listed.items)


# -- message triggers over RabbitMQ --------------------------------------------------


class Broker:
    """What a message test needs: the app's client, names, and a channel to publish on."""

    def __init__(self, client: httpx.AsyncClient, channel: Any, prefix: str) -> None:
        self.client = client
        self.channel = channel
        self.orders = f"{prefix}orders"
        self.counts = f"{prefix}counts"
        self.exchange = f"{prefix}shop"
        self.dead = f"{prefix}triggers.dead"

    async def send(
        self, routing_key: str, body: bytes, *, exchange: str = "", **props: Any
    ) -> None:
        await self.channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=spec.Basic.Properties(delivery_mode=2, **props),
        )

    async def jobs(self, kind: str) -> list[dict[str, Any]]:
        answer = await self.client.get("/api/jobs", params={"kind": kind})
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    async def dead_letters(self, count: int) -> list[Any]:
        """The first `count` messages of the dead-letter queue (fails after 10 s)."""
        got: list[Any] = []

        async def take() -> list[Any]:
            message = await self.channel.basic_get(self.dead, no_ack=True)
            if message.delivery_tag is not None and isinstance(message.delivery, spec.Basic.GetOk):
                got.append(message)
            return got

        return await wait_until(take, lambda g: len(g) >= count)


class FlakyStore(MemoryStateStore):
    """A memory store whose first `failures` inserts find the backend down."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def insert(self, job: Job, *, uniqueness: Uniqueness, on_conflict: OnConflict) -> Created:
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailable("memory", "down for the test")
        return await super().insert(job, uniqueness=uniqueness, on_conflict=on_conflict)


@pytest.fixture
async def broker(
    request: pytest.FixtureRequest, amqp_url: str, unique_prefix: str, anyio_backend: str
) -> AsyncIterator[Broker]:
    """A node whose message triggers consume fresh queues and a fresh exchange."""
    orders, counts = f"{unique_prefix}orders", f"{unique_prefix}counts"
    exchange = f"{unique_prefix}shop"
    triggers = [
        {"name": "orders", "kind": "demo.echo", "queue": orders, "id_field": "eventId"},
        {"name": "counts", "kind": "demo.count", "queue": counts},
        {"name": "shop", "kind": "demo.echo", "exchange": exchange, "binding_key": "order.*"},
    ]
    settings = settings_with(*triggers, amqp_url=amqp_url, key_prefix=unique_prefix)
    failures = getattr(request, "param", 0)
    app = create_app(settings, store=FlakyStore(failures))
    try:
        async with live_server(app) as base_url, aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                yield Broker(client, channel, unique_prefix)
    finally:
        async with aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            for queue in (orders, counts, f"{unique_prefix}trigger.shop"):
                await channel.queue_delete(queue)
            await channel.queue_delete(f"{unique_prefix}triggers.dead")
            await channel.exchange_delete(exchange)


@pytest.mark.rabbitmq
async def test_a_queue_message_starts_one_job_however_often_it_is_sent(broker: Broker) -> None:
    body = msgspec.json.encode({"eventId": "e-1", "order": 7})
    await broker.send(broker.orders, body, message_id="m-1", headers={"x-shop": "north"})
    await broker.send(broker.orders, body, message_id="m-1")
    await broker.send(broker.orders, msgspec.json.encode({"eventId": "e-2"}), message_id="m-2")
    # Handled in order: once the last one made its job, the duplicate was handled too.
    jobs = await wait_until(lambda: broker.jobs("demo.echo"), lambda items: len(items) >= 2)
    counted = (await broker.client.get("/api/triggers")).json()["items"]
    orders = next(t for t in counted if t["name"] == "orders")
    assert (orders["received"], orders["created"], orders["existing"]) == (3, 2, 1)
    assert orders["queue"] == broker.orders
    assert {job["id"] for job in jobs} == {request_id("orders", "m-1"), request_id("orders", "m-2")}
    assert all(job["trigger"] == {"type": "message", "name": "orders"} for job in jobs)
    status = await finished(broker.client, request_id("orders", "m-1"))
    result = (await broker.client.get(f"/api/jobs/{status['id']}/result")).json()
    assert result["content"] == {"eventId": "e-1", "order": 7}
    assert result["headers"]["x-shop"] == "north"


@pytest.mark.rabbitmq
async def test_an_exchange_message_with_the_binding_key_starts_a_job(broker: Broker) -> None:
    body = msgspec.json.encode({"order": 1})
    await broker.send("invoice.sent", body, exchange=broker.exchange, message_id="other")
    await broker.send("order.paid", body, exchange=broker.exchange, message_id="m-1")
    [job] = await wait_until(lambda: broker.jobs("demo.echo"), lambda items: len(items) >= 1)
    assert job["trigger"] == {"type": "message", "name": "shop"}
    assert job["id"] == request_id("shop", "m-1")


@pytest.mark.rabbitmq
async def test_messages_that_cannot_become_jobs_are_dead_lettered(broker: Broker) -> None:
    await broker.send(broker.counts, b"not json {", message_id="m-1", headers={"x-from": "erp"})
    await broker.send(broker.counts, b'{"n": "many"}', message_id="m-2")
    await broker.send(broker.counts, b'{"n": 0}', message_id="m-3")
    [job] = await wait_until(lambda: broker.jobs("demo.count"), lambda items: len(items) >= 1)
    assert job["id"] == request_id("counts", "m-3")
    first, second = await broker.dead_letters(2)
    assert first.body == b"not json {"
    headers = first.header.properties.headers
    assert "not JSON" in headers["x-asyncproc-reason"]
    assert headers["x-asyncproc-trigger"] == "counts"
    assert headers["x-from"] == "erp"
    assert first.header.properties.message_id == "m-1"
    assert first.header.properties.delivery_mode == 2
    assert second.body == b'{"n": "many"}'
    reason = second.header.properties.headers["x-asyncproc-reason"]
    assert "invalid" in reason
    counted = (await broker.client.get("/api/triggers")).json()["items"]
    counts = next(t for t in counted if t["name"] == "counts")
    assert (counts["received"], counts["created"], counts["refused"]) == (3, 1, 2)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker", [1], indirect=True)
async def test_a_message_goes_back_while_the_store_is_down(broker: Broker) -> None:
    await broker.send(broker.orders, b'{"eventId": "e-1"}', message_id="m-1")
    [job] = await wait_until(lambda: broker.jobs("demo.echo"), lambda items: len(items) >= 1)
    assert job["id"] == request_id("orders", "m-1")
    declared = await broker.channel.queue_declare(broker.dead, passive=True)
    assert declared.message_count == 0


@pytest.mark.rabbitmq
async def test_consumption_resumes_after_the_broker_closed_the_connection(
    broker: Broker, unique_prefix: str
) -> None:
    ctl = rabbitmqctl()
    await broker.send(broker.orders, b'{"n": 1}', message_id="m-1")
    await wait_until(lambda: broker.jobs("demo.echo"), lambda items: len(items) >= 1)
    # The trigger connection carries the test's prefix in its name.
    assert await close_connections(ctl, unique_prefix) >= 1
    await broker.send(broker.orders, b'{"n": 2}', message_id="m-2")
    jobs = await wait_until(
        lambda: broker.jobs("demo.echo"), lambda items: len(items) >= 2, timeout=30
    )
    assert {job["id"] for job in jobs} == {request_id("orders", "m-1"), request_id("orders", "m-2")}
