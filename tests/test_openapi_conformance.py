"""Schemathesis over `/openapi.json` against a live node: the server keeps its document.

Each operation of the document gets generated requests (schemathesis's examples,
coverage and fuzzing phases, a few examples each) against a real `python app.py` node:
on the memory backends, and on Redis + RabbitMQ under a key prefix of its own (and the
MyLab routes on a node that serves them for an external kind). Every
answer must be no server error, a documented status code with a documented content type
and a body that matches its schema; a request the schema allows must not be refused
(`positive_data_acceptance`) and one it forbids must not be accepted
(`negative_data_rejection`). Deterministic (Hypothesis derandomised): CI sees the same
requests every run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from schemathesis import Case

from asyncproc.backends.rabbitmq import RabbitMQQueue
from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess

# Few examples per operation: each run (about forty operations) takes 10-15 s here.
MAX_EXAMPLES = 10
# A long poll waits its full `wait` on a job that does not change: the test waits less.
LONGEST_WAIT = 0.05

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
)
# Where a value the schema allows may still be refused, and why (the 4xx is documented):
ACCEPTS_ALSO = [
    # A cursor is opaque: only one this service handed out is valid (400 otherwise).
    ("/api/jobs", ["400"]),
    ("/api/dead-letters", ["400"]),
    # The kind's content schema, the cron syntax and the time zone are checked when the
    # schedule is defined (422 naming the field), not by the body's JSON Schema.
    ("/api/schedules/{name}", ["422"]),
    # MyLab's contract: a result asked for before there is one answers 400.
    ("/requests/{id}/result", ["400"]),
    ("/v2/requests/{id}/result", ["400"]),
]


# Schemathesis's own list of rejections, and 413: a body over `max_body` is refused
# before anything reads it.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


def _config() -> schemathesis.Config:
    checks: dict[str, Any] = {"enabled": False}
    for name in CHECKS:
        checks[name] = {"enabled": True}
    checks["negative_data_rejection"]["expected-statuses"] = REJECTIONS
    positive = checks["positive_data_acceptance"]
    # 404 (no such job), 409 (a key held, a lease lost), 503 (a full queue) are answers
    # to valid requests; so is 413: a schema bounds lengths in characters, not a body's
    # bytes (`max_body`).
    positive["expected-statuses"] = ["2xx", "404", "409", "413", "503"]
    operations = [
        {
            "include-path": path,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [*positive["expected-statuses"], *more]
                }
            },
        }
        for path, more in ACCEPTS_ALSO
    ]
    return schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": checks,
            "operations": operations,
            "max-stream-events": 2,
            "request-timeout": 10,
        }
    )


def _node_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCPROC_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", ASYNCPROC_SHUTDOWN_GRACE="1")
    env.update({f"ASYNCPROC_{name.upper()}": value for name, value in settings.items()})
    return env


def _routings(url: str) -> set[str]:
    """Every `procRouting` of the node's jobs (each one has a queue to delete)."""
    routings = {"default"}
    cursor: str | None = None
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/jobs", params=params).json()
            routings |= {job["procRouting"] for job in page["items"]}
            cursor = page["next"]
            if cursor is None:
                return routings


async def _forget(redis_url: str, amqp_url: str, prefix: str, routings: set[str]) -> None:
    queue = RabbitMQQueue(amqp_url, prefix=prefix)
    try:
        await queue.delete(sorted(routings))
    finally:
        await queue.aclose()
    await forget_cluster(redis_url, amqp_url, prefix)


@pytest.fixture(
    params=[
        "memory",
        pytest.param(
            "cluster", marks=[pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]
        ),
    ]
)
def api_schema(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A live node (`python app.py`) and its OpenAPI document, loaded by schemathesis."""
    cluster = request.param == "cluster"
    settings: dict[str, str] = {}
    if cluster:
        redis_url = request.getfixturevalue("redis_url")
        amqp_url = request.getfixturevalue("amqp_url")
        prefix = request.getfixturevalue("unique_prefix")
        settings = {
            "state": "redis",
            "queue": "rabbitmq",
            "redis_url": redis_url,
            "amqp_url": amqp_url,
            "key_prefix": prefix,
        }
    node = NodeProcess(_node_env(**settings), tmp_path, request.param)
    routings: set[str] = set()
    try:
        node.wait_healthy()
        yield schemathesis.openapi.from_url(f"{node.url}/openapi.json", config=_config())
        if cluster:
            routings = _routings(node.url)
    finally:
        node.stop()
        if cluster:
            anyio.run(_forget, redis_url, amqp_url, prefix, routings | {"default"})


def _shorten_long_polls(case: Case) -> None:
    """A valid `wait` (0..60 s) becomes at most `LONGEST_WAIT`; anything else stays as
    generated (the server must refuse it)."""
    for where in (case.query, case.body):
        if not isinstance(where, dict):
            continue
        wait = where.get("wait")
        if isinstance(wait, str):
            try:
                number = float(wait)
            except ValueError:
                continue
            if 0 < number <= 60:
                where["wait"] = str(LONGEST_WAIT)
        elif isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 60:
            where["wait"] = LONGEST_WAIT


# Every kind's enqueue (its body holds the kind's content schema); enqueue-batch,
# progress, stop, result and release, the same for every kind, of one kind only.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    path_regex=r"^/api/demo\.(?!count/)[a-z0-9_.-]+/(enqueue-batch|progress|stop|result|release)$"
)


@schema.parametrize()
def test_the_server_keeps_its_openapi_document(case: Case) -> None:
    _shorten_long_polls(case)
    case.call_and_validate()


@pytest.fixture
def mylab_schema(tmp_path: Path) -> Iterator[Any]:
    """A memory node serving MyLab's API for an external kind, and its document."""
    settings = {"mylab": "true", "mylab_kind": "mylab.ext", "external_kinds": "mylab.ext"}
    node = NodeProcess(_node_env(**settings), tmp_path, "mylab")
    try:
        node.wait_healthy()
        yield schemathesis.openapi.from_url(f"{node.url}/openapi.json", config=_config())
    finally:
        node.stop()


mylab = schemathesis.pytest.from_fixture("mylab_schema").include(tag="mylab")


@mylab.parametrize()
def test_the_mylab_routes_keep_the_document(case: Case) -> None:
    case.call_and_validate()
