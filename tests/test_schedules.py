"""Schedules (API.md section 12): the API, firing, overlap, catch-up, config.

The API tests run a real app (memory backends, or the Redis store); the catch-up
tests drive a `Scheduler` with a clock of their own, so no test waits for hours.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import msgspec
import pytest
from openapi_spec_validator import validate

from asyncproc import JobContext, Registry
from asyncproc.backends.memory import MemoryQueue, MemoryStateStore
from asyncproc.config import ScheduleSettings, load_settings
from asyncproc.errors import ConfigError
from asyncproc.interfaces import JobQuery, StateStore
from asyncproc.plugins.schedule_book import SPACE, ScheduleBook, StoredSchedule
from asyncproc.plugins.schedule_book import define as define_schedule
from asyncproc.plugins.schedule_runner import Scheduler
from asyncproc.registry import load_plugins
from asyncproc.schedule_times import Catchup, Overlap, tick_request_id
from asyncproc.server import create_app
from asyncproc.service import JobService
from tests.support import api_client, free_port, wait_until

pytestmark = pytest.mark.anyio

kinds = Registry()


class Quick(msgspec.Struct, forbid_unknown_fields=True):
    """Content of `t.quick`."""

    n: int = 0


@kinds.job("t.quick", content=Quick)
async def quick(ctx: JobContext, content: Quick) -> int:
    """Returns at once."""
    return content.n


@kinds.job("t.hold", content=Quick)
async def hold(ctx: JobContext, content: Quick) -> None:
    """Runs until stopped."""
    await anyio.sleep_forever()


@kinds.job("t.keyed", content=Quick, unique="active")
async def keyed(ctx: JobContext, content: Quick) -> None:
    """One per key at a time; runs until stopped."""
    await anyio.sleep_forever()


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], StateStore]]:
    """Makes the StateStore of a test: memory, or Redis under a prefix of its own."""
    if request.param == "memory":
        store = MemoryStateStore()
        yield lambda: store  # one in-memory store, however many apps use it
        return
    from asyncproc.backends.redis import RedisStateStore

    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("unique_prefix")
    yield lambda: RedisStateStore(url, prefix=prefix)
    _delete_prefix(url, prefix)


def _delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@asynccontextmanager
async def served(
    store: StateStore, *schedules: ScheduleSettings, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An app on `store` with the test kinds and these config schedules, and a client."""
    app = create_app(
        load_settings(environ={}, schedules=schedules, **{"shutdown_grace": 0.2, **settings}),
        registry=kinds,
        store=store,
        queue=MemoryQueue(),
    )
    async with api_client(app) as client:
        yield client


async def jobs_of(client: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    """Every listed job of `kind`, oldest first."""
    response = await client.get("/api/jobs", params={"kind": kind, "limit": 200})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["items"]))


async def put(client: httpx.AsyncClient, name: str, **body: Any) -> httpx.Response:
    body.setdefault("kind", "t.quick")
    body.setdefault("content", {})
    return await client.put(f"/api/schedules/{name}", json=body)


def tick_of(job_id: str) -> datetime:
    """The tick time a scheduled job's requestId names."""
    stamp = job_id.rsplit(":", 1)[1].rstrip("Z")
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the API -------------------------------------------------------------------------


async def test_put_get_list_delete(store_factory: Callable[[], StateStore]) -> None:
    async with served(store_factory(), scheduler=False) as client:
        created = await put(client, "b-report", cron="0 2 * * *", timezone="Europe/Budapest")
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert schedule == {
            "name": "b-report",
            "kind": "t.quick",
            "content": {},
            "key": None,
            "cron": "0 2 * * *",
            "every": None,
            "timezone": "Europe/Budapest",
            "overlap": "skip",
            "catchup": "one",
            "catchupWindow": 3600.0,
            "paused": False,
            "nextRunAt": schedule["nextRunAt"],
            "lastRunAt": None,
            "source": "api",
            "recent": [],
        }
        next_run = parse_time(schedule["nextRunAt"]).astimezone(ZoneInfo("Europe/Budapest"))
        assert (next_run.hour, next_run.minute) == (2, 0)

        replaced = await put(
            client, "b-report", every="15m", content={"n": 2}, key="k", catchupWindow=60
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["every"] == 900.0
        assert replaced.json()["cron"] is None
        assert replaced.json()["content"] == {"n": 2}
        assert replaced.json()["catchupWindow"] == 60.0
        assert (await put(client, "a-first", every=60)).status_code == 201

        listed = (await client.get("/api/schedules")).json()["items"]
        assert [s["name"] for s in listed] == ["a-first", "b-report"]
        got = await client.get("/api/schedules/b-report")
        assert got.status_code == 200
        assert got.json() == replaced.json()

        deleted = await client.delete("/api/schedules/b-report")
        assert deleted.status_code == 204
        for method, path in [
            ("GET", "/api/schedules/b-report"),
            ("DELETE", "/api/schedules/b-report"),
            ("POST", "/api/schedules/b-report/pause"),
            ("POST", "/api/schedules/b-report/resume"),
            ("POST", "/api/schedules/b-report/trigger"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"every": 0.5}, "every"),
        ({"every": "soon"}, "every"),
        ({"cron": "* * * * *", "every": 60}, "cron"),
        ({}, "cron"),
        ({"every": 60, "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"every": 60, "kind": "t.nothing"}, "kind"),
        ({"every": 60, "content": {"n": "two"}}, "content"),
        ({"every": 60, "overlap": "sometimes"}, "overlap"),
        ({"every": 60, "catchup": "most"}, "catchup"),
        ({"every": 60, "catchupWindow": "long"}, "catchupWindow"),
        ({"every": 60, "key": ""}, "key"),
    ],
)
async def test_put_refuses_a_bad_definition_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    async with served(MemoryStateStore(), scheduler=False) as client:
        response = await put(client, "bad", **body)
        assert response.status_code == 422, response.text
        assert field in response.json()["error"]["message"]
        assert (await client.get("/api/schedules/bad")).status_code == 404


async def test_put_refuses_a_bad_name_and_a_body_without_content() -> None:
    async with served(MemoryStateStore(), scheduler=False) as client:
        response = await put(client, "no spaces", every=60)
        assert response.status_code == 422
        assert "name" in response.json()["error"]["message"]
        response = await client.put("/api/schedules/x", json={"kind": "t.quick", "every": 60})
        assert response.status_code == 400
        response = await client.put(
            "/api/schedules/x", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400


async def test_every_second_starts_one_job_per_tick_with_derived_request_ids(
    store_factory: Callable[[], StateStore],
) -> None:
    async with served(store_factory()) as client:
        assert (await put(client, "sec", every=1, overlap="allow")).status_code == 201
        jobs = await wait_until(
            lambda: jobs_of(client, "t.quick"), lambda jobs: len(jobs) >= 3, timeout=15
        )
        schedule = (await client.get("/api/schedules/sec")).json()
    ticks = [tick_of(job["id"]) for job in jobs]
    for job, tick in zip(jobs, ticks, strict=True):
        assert job["id"] == tick_request_id("sec", tick)
        assert job["trigger"] == {"type": "schedule", "name": "sec"}
    # One job per tick, none missed: consecutive seconds.
    assert ticks == [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    recent = schedule["recent"]
    assert [r["outcome"] for r in recent] == ["created"] * len(recent)
    assert {r["jobId"] for r in recent} <= {job["id"] for job in jobs} | {
        tick_request_id("sec", ticks[-1] + timedelta(seconds=i)) for i in range(1, 5)
    }
    assert [parse_time(r["at"]) for r in recent] == sorted(
        (parse_time(r["at"]) for r in recent), reverse=True
    )
    assert parse_time(schedule["lastRunAt"]) == parse_time(recent[0]["at"])
    assert parse_time(schedule["nextRunAt"]) > parse_time(schedule["lastRunAt"])


async def test_overlap_skip_waits_for_the_running_job(
    store_factory: Callable[[], StateStore],
) -> None:
    async with served(store_factory()) as client:
        await put(client, "hold", kind="t.hold", every=1)
        first = (await wait_until(lambda: jobs_of(client, "t.hold"), lambda jobs: len(jobs) == 1))[
            0
        ]

        async def recent() -> list[dict[str, Any]]:
            return list((await client.get("/api/schedules/hold")).json()["recent"])

        runs = await wait_until(
            recent, lambda runs: sum(r["outcome"] == "skipped" for r in runs) >= 2, timeout=15
        )
        # Newest first: the ticks since the first one skipped for it.
        assert all(run["jobId"] == first["id"] for run in runs)
        assert [r["outcome"] for r in runs] == ["skipped"] * (len(runs) - 1) + ["created"]
        assert len(await jobs_of(client, "t.hold")) == 1

        # Trigger now finds the active job and answers with it.
        triggered = await client.post("/api/schedules/hold/trigger")
        assert triggered.status_code == 200
        assert triggered.json()["id"] == first["id"]

        # Once it has ended, the next tick starts a new job.
        assert (await client.post(f"/api/jobs/{first['id']}/stop")).status_code in (200, 202)
        jobs = await wait_until(
            lambda: jobs_of(client, "t.hold"), lambda jobs: len(jobs) == 2, timeout=15
        )
        assert jobs[0]["state"] == "stopped"


async def test_overlap_allow_runs_jobs_side_by_side(
    store_factory: Callable[[], StateStore],
) -> None:
    async with served(store_factory()) as client:
        await put(client, "side", kind="t.hold", every=1, overlap="allow")

        async def running() -> list[dict[str, Any]]:
            return [j for j in await jobs_of(client, "t.hold") if j["state"] == "running"]

        await wait_until(running, lambda jobs: len(jobs) >= 2, timeout=15)
        await client.post("/api/schedules/side/pause")
        for job in await jobs_of(client, "t.hold"):
            await client.post(f"/api/jobs/{job['id']}/stop")


async def test_overlap_replace_stops_the_previous_job_before_the_next_starts(
    store_factory: Callable[[], StateStore],
) -> None:
    async with served(store_factory()) as client:
        await put(client, "swap", kind="t.hold", every=1, overlap="replace")

        async def started() -> list[dict[str, Any]]:
            return [j for j in await jobs_of(client, "t.hold") if j["startedAt"] is not None]

        jobs = await wait_until(started, lambda jobs: len(jobs) >= 3, timeout=20)
        await client.post("/api/schedules/swap/pause")
        jobs = await jobs_of(client, "t.hold")
    ended = [j for j in jobs if j["state"] == "stopped"]
    assert len(ended) >= 2
    by_start = sorted((j for j in jobs if j["startedAt"]), key=lambda j: j["startedAt"])
    for earlier, later in itertools.pairwise(by_start):
        # Never two at once: each one ended before the next one started.
        assert earlier["state"] == "stopped"
        assert parse_time(earlier["finishedAt"]) <= parse_time(later["startedAt"])


async def test_overlap_replace_with_a_key_rule_replaces_the_holder() -> None:
    async with served(MemoryStateStore()) as client:
        await put(client, "keyed", kind="t.keyed", key="k1", every=1, overlap="replace")
        jobs = await wait_until(
            lambda: jobs_of(client, "t.keyed"),
            lambda jobs: len(jobs) >= 2 and jobs[0]["state"] == "stopped",
            timeout=15,
        )
        await client.post("/api/schedules/keyed/pause")
        context = (await client.get("/api/keys/t.keyed/k1")).json()
    assert all(job["key"] == "k1" for job in jobs)
    assert context["holder"]["id"] != jobs[0]["id"]


async def test_trigger_starts_a_job_now(store_factory: Callable[[], StateStore]) -> None:
    async with served(store_factory()) as client:
        await put(client, "manual", cron="0 0 1 1 *", overlap="allow", content={"n": 7})
        response = await client.post("/api/schedules/manual/trigger")
        assert response.status_code == 202, response.text
        status = response.json()
        assert response.headers["location"] == f"/api/jobs/{status['id']}"
        assert status["trigger"] == {"type": "schedule", "name": "manual"}
        assert status["kind"] == "t.quick"
        schedule = (await client.get("/api/schedules/manual")).json()
        assert schedule["recent"][0]["jobId"] == status["id"]
        assert schedule["recent"][0]["outcome"] == "created"
        assert schedule["lastRunAt"] == schedule["recent"][0]["at"]
        done = await wait_until(
            lambda: client.get(f"/api/jobs/{status['id']}"),
            lambda r: r.json()["state"] == "succeeded",
        )
        assert (await client.get(f"/api/jobs/{done.json()['id']}/result")).json() == 7


async def test_trigger_answers_a_refused_enqueue_like_an_enqueue() -> None:
    async with served(MemoryStateStore()) as client:
        held = await client.post(
            "/api/t.keyed/enqueue", json={"content": {}, "key": "busy", "onConflict": "reject"}
        )
        assert held.status_code == 202
        await put(client, "clash", kind="t.keyed", key="busy", cron="0 0 1 1 *")
        response = await client.post("/api/schedules/clash/trigger")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "key_conflict"
        await client.post(f"/api/jobs/{held.json()['id']}/stop")


async def test_a_refused_tick_is_recorded_with_its_reason(
    store_factory: Callable[[], StateStore],
) -> None:
    async with served(store_factory()) as client:
        held = await client.post("/api/t.keyed/enqueue", json={"content": {}, "key": "busy"})
        assert held.status_code == 202
        await put(client, "refused", kind="t.keyed", key="busy", every=1)

        async def recent() -> list[dict[str, Any]]:
            return list((await client.get("/api/schedules/refused")).json()["recent"])

        runs = await wait_until(recent, lambda runs: len(runs) >= 2, timeout=15)
        await client.post("/api/schedules/refused/pause")
        await client.post(f"/api/jobs/{held.json()['id']}/stop")
    assert len({run["at"] for run in runs}) == len(runs)
    for run in runs:
        assert run["outcome"] == "refused"
        assert run["jobId"] is None
        assert run["error"]["code"] == "key_conflict"
        assert run["error"]["jobId"] == held.json()["id"]


async def test_the_schedule_routes_are_in_the_openapi_document() -> None:
    async with served(MemoryStateStore(), scheduler=False) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    paths = document["paths"]
    assert set(paths["/api/schedules/{name}"]) == {"get", "put", "delete"}
    for action in ("pause", "resume", "trigger"):
        assert "post" in paths[f"/api/schedules/{{name}}/{action}"]
    schemas = document["components"]["schemas"]
    assert {"Schedule", "ScheduleBody", "ScheduleList", "Run"} <= set(schemas)
    assert "catchupWindow" in schemas["Schedule"]["properties"]


async def test_pause_and_resume(store_factory: Callable[[], StateStore]) -> None:
    async with served(store_factory()) as client:
        created = await put(client, "p", every=1, paused=True, overlap="allow")
        assert created.json()["paused"] is True
        assert created.json()["nextRunAt"] is None
        resumed = await client.post("/api/schedules/p/resume")
        assert resumed.status_code == 200
        assert resumed.json()["paused"] is False
        assert resumed.json()["nextRunAt"] is not None
        await wait_until(lambda: jobs_of(client, "t.quick"), lambda jobs: len(jobs) >= 1)
        paused = await client.post("/api/schedules/p/pause")
        assert paused.status_code == 200
        assert (paused.json()["paused"], paused.json()["nextRunAt"]) == (True, None)


# -- catch-up and races, with a clock of the test's own --------------------------------


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


T0 = datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC)


@asynccontextmanager
async def book_on(store: StateStore, clock: Clock) -> AsyncIterator[ScheduleBook]:
    """A ScheduleBook over a started `store` (jobs stay queued: no worker runs)."""
    service = JobService(
        registry=_full_registry(),
        store=store,
        queue=MemoryQueue(),
        processing_timeout=3600,
        retention=3600,
    )
    async with AsyncExitStack() as stack:
        await store.start()
        stack.push_async_callback(store.aclose)
        yield ScheduleBook(service, clock=clock)


def _full_registry() -> Registry:
    registry = load_plugins(())
    registry.include(kinds)
    return registry


async def define(
    book: ScheduleBook, name: str, *, catchup: Catchup, overlap: Overlap = Overlap.ALLOW
) -> None:
    definition = define_schedule(
        book.service.registry,
        kind="t.quick",
        content=b"{}",
        key=None,
        cron=None,
        every=60.0,
        timezone="UTC",
        overlap=overlap,
        catchup=catchup,
        catchup_window=1800.0,
        paused=False,
    )
    await book.put(name, definition, "api")


async def scheduled_ids(book: ScheduleBook, name: str) -> list[str]:
    page = await book.store.list_jobs(JobQuery(kind="t.quick", limit=200))
    return sorted(job.id for job in page.items if job.trigger.name == name)


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        (Catchup.SKIP, []),
        (Catchup.ONE, [T0.replace(hour=11, minute=0, microsecond=0)]),
        (
            Catchup.ALL,
            [
                T0.replace(hour=10, minute=31, microsecond=0) + timedelta(minutes=i)
                for i in range(30)
            ],
        ),
    ],
)
async def test_catchup_after_no_scheduler_ran(
    store_factory: Callable[[], StateStore], catchup: Catchup, expected: list[datetime]
) -> None:
    clock = Clock(T0)
    async with book_on(store_factory(), clock) as book:
        await define(book, "c", catchup=catchup)
        await Scheduler(book).poll()  # a scheduler ran at T0, then none for an hour
        clock.now = T0 + timedelta(hours=1)  # 11:00:00.5; catchupWindow is 30 min
        await Scheduler(book).poll()
        ids = await scheduled_ids(book, "c")
        assert ids == sorted(tick_request_id("c", tick) for tick in expected)
        schedule = await book.get("c")
        assert schedule is not None
        assert schedule.next_run_at == T0.replace(hour=11, minute=1, microsecond=0)
        # While a scheduler runs (polling every few seconds), every tick is fired.
        scheduler = Scheduler(book)
        for _ in range(40):
            clock.now += timedelta(seconds=3)
            await scheduler.poll()
        later = set(await scheduled_ids(book, "c")) - set(ids)
        assert later == {
            tick_request_id("c", T0.replace(hour=11, minute=m, microsecond=0)) for m in (1, 2)
        }


async def test_ticks_of_a_busy_scheduler_are_owed_not_missed(
    store_factory: Callable[[], StateStore],
) -> None:
    clock = Clock(T0)
    async with book_on(store_factory(), clock) as book:
        await define(book, "late", catchup=Catchup.SKIP)
        scheduler = Scheduler(book)
        clock.now = T0 + timedelta(seconds=57)
        await scheduler.poll()
        clock.now += timedelta(seconds=4.5)  # busy: the tick fell 2 s before this poll
        await scheduler.poll()
        assert await scheduled_ids(book, "late") == [
            tick_request_id("late", T0.replace(minute=1, microsecond=0))
        ]


async def test_schedulers_racing_start_one_job_per_tick(
    store_factory: Callable[[], StateStore],
) -> None:
    clock = Clock(T0)
    async with book_on(store_factory(), clock) as book:
        await define(book, "race", catchup=Catchup.ALL, overlap=Overlap.SKIP)
        schedulers = [Scheduler(book) for _ in range(4)]
        await schedulers[0].poll()
        for minute in range(1, 4):
            clock.now = T0 + timedelta(minutes=minute)
            async with anyio.create_task_group() as tg:
                for scheduler in schedulers:
                    tg.start_soon(scheduler.poll)
        schedule = await book.get("race")
        ids = await scheduled_ids(book, "race")
    assert schedule is not None
    # Overlap skip: the first tick's job is still queued (no worker), later ticks skip.
    first = tick_request_id("race", T0.replace(minute=1, microsecond=0))
    assert ids == [first]
    by_at = {run.at: run for run in schedule.recent}
    assert len(by_at) == len(schedule.recent) == 3
    assert by_at[T0.replace(minute=1, microsecond=0)].outcome == "created"
    for minute in (2, 3):
        run = by_at[T0.replace(minute=minute, microsecond=0)]
        assert (run.outcome, run.job_id) == ("skipped", first)


async def test_a_schedule_due_in_the_past_catches_up_at_start() -> None:
    store = MemoryStateStore()
    await store.start()
    now = datetime.now(UTC)
    due = now.replace(second=0, microsecond=0) - timedelta(minutes=10)
    stored = StoredSchedule(
        name="old",
        kind="t.quick",
        content=msgspec.Raw(b"{}"),
        key=None,
        cron=None,
        every=60.0,
        timezone="UTC",
        overlap=Overlap.ALLOW,
        catchup=Catchup.ONE,
        catchup_window=3600.0,
        paused=False,
        next_run_at=due,
        last_run_at=None,
        source="api",
        recent=(),
    )
    await store.put_doc(SPACE, "old", msgspec.json.encode(stored))
    async with served(store) as client:
        schedule = await wait_until(
            lambda: client.get("/api/schedules/old"),
            lambda r: parse_time(r.json()["nextRunAt"]) > now,
        )
        jobs = await jobs_of(client, "t.quick")
    latest = parse_time(schedule.json()["nextRunAt"]) - timedelta(minutes=1)
    # Catch-up `one`: of the ten missed ticks, the latest only (later ticks may follow).
    caught = [job["id"] for job in jobs if tick_of(job["id"]) <= latest]
    assert caught == [tick_request_id("old", latest)]


# -- configuration ---------------------------------------------------------------------


async def test_config_schedules_are_written_at_start_up() -> None:
    store = MemoryStateStore()
    nightly = ScheduleSettings(
        name="nightly", kind="t.quick", content={"n": 1}, cron="0 2 * * *", overlap="allow"
    )
    async with served(store, nightly, scheduler=False) as client:
        schedule = (await client.get("/api/schedules/nightly")).json()
        assert schedule["source"] == "config"
        assert schedule["content"] == {"n": 1}
        assert schedule["overlap"] == "allow"
        changed = await put(client, "nightly", cron="0 3 * * *")
        assert changed.status_code == 200
        assert changed.json()["source"] == "api"
    # API changes last until a node starts with that config.
    async with served(store, nightly, scheduler=False) as client:
        schedule = (await client.get("/api/schedules/nightly")).json()
        assert (schedule["source"], schedule["cron"]) == ("config", "0 2 * * *")


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"cron": "0 25 * * *"}, "schedules[0].cron"),
        ({"every": 0.2}, "schedules[0].every"),
        ({}, "schedules[0].cron"),
        ({"every": 60, "timezone": "Nowhere/Land"}, "schedules[0].timezone"),
        ({"every": 60, "kind": "t.unknown"}, "schedules[0].kind"),
        ({"every": 60, "content": {"n": "x"}}, "schedules[0].content"),
        ({"every": 60, "overlap": "never"}, "schedules[0].overlap"),
        ({"every": 60, "catchup": "never"}, "schedules[0].catchup"),
        ({"every": 60, "name": "a b"}, "schedules[0].name"),
    ],
)
async def test_a_bad_config_schedule_stops_start_up_naming_the_key(
    table: dict[str, Any], key: str
) -> None:
    fields: dict[str, Any] = {"name": "s", "kind": "t.quick", "content": {}} | table
    settings = load_settings(environ={}, schedules=(ScheduleSettings(**fields),))
    with pytest.raises(ConfigError) as raised:
        create_app(settings, registry=kinds, store=MemoryStateStore(), queue=MemoryQueue())
    assert raised.value.key == key


async def test_a_config_schedule_declared_twice_stops_start_up() -> None:
    twice = [ScheduleSettings(name="s", kind="t.quick", content={}, every=60)] * 2
    settings = load_settings(environ={}, schedules=tuple(twice))
    with pytest.raises(ConfigError) as raised:
        create_app(settings, registry=kinds, store=MemoryStateStore(), queue=MemoryQueue())
    assert raised.value.key == "schedules[1].name"


def test_config_file_durations_of_a_schedule(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[schedules]]\nname = "s"\nkind = "t.quick"\nevery = "90s"\ncatchup_window = "2h"\n'
    )
    settings = load_settings(path, environ={})
    assert settings.schedules[0].every == 90.0
    assert settings.schedules[0].catchup_window == 7200.0


async def test_only_nodes_with_scheduler_on_fire_schedules() -> None:
    store = MemoryStateStore()
    async with served(store, scheduler=False) as client:
        await put(client, "idle", every=1, overlap="allow")
        assert (await client.get("/api/schedules/idle")).status_code == 200
        # The era document is what a running scheduler stamps on every pass.
        assert await store.get_doc("scheduler", "era") is None
    async with served(store) as client:
        jobs = await wait_until(lambda: jobs_of(client, "t.quick"), lambda jobs: len(jobs) >= 1)
    assert jobs[0]["trigger"] == {"type": "schedule", "name": "idle"}


async def test_a_bad_config_schedule_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'port = {free_port()}\n[[schedules]]\nname = "n"\nkind = "demo.count"\n'
        'content = { n = 1 }\ncron = "0 2 * *"\n'
    )
    with anyio.fail_after(60):
        ended = await anyio.run_process(
            [sys.executable, "-m", "asyncproc.cli", "serve", "--config", str(config)], check=False
        )
    assert ended.returncode == 2
    assert "schedules[0].cron" in ended.stderr.decode()
    assert "Traceback" not in ended.stderr.decode()
