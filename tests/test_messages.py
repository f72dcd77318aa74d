"""What a user reads when a request is refused: the path, what is expected in plain
words and what was given (422), where a body stopped being JSON (400), and the known
kinds for an unknown one (404). A real uvicorn server, memory backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgspec
import pytest

from asyncproc.messages import describe_type, state_phrase
from tests.support import api_client, demo_app

pytestmark = pytest.mark.anyio

JSON_TYPE = {"content-type": "application/json"}
COUNT = "/api/demo.count/enqueue"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(demo_app()) as client:
        yield client


async def refused(
    client: httpx.AsyncClient, path: str, body: bytes, status_code: int
) -> dict[str, Any]:
    response = await client.post(path, content=body, headers=JSON_TYPE)
    assert response.status_code == status_code, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            COUNT,
            b'{"content": {"n": "ten"}}',
            'content.n: expected an integer of 0 or more, got "ten"',
        ),
        (COUNT, b'{"content": {"n": -1}}', "content.n: expected an integer of 0 or more, got -1"),
        (COUNT, b'{"content": {"n": 1.5}}', "content.n: expected an integer of 0 or more, got 1.5"),
        (COUNT, b'{"content": {}}', "content.n: expected an integer of 0 or more, got nothing"),
        (COUNT, b'{"content": 5}', "content: expected an object, got 5"),
        (
            COUNT,
            b'{"content": {"n": 1, "colour": 2}}',
            "content.colour: unknown field (known: n, delay)",
        ),
        (
            "/api/demo.fail/enqueue",
            b'{"content": {"mode": "loud", "message": "m"}}',
            'content.mode: expected one of "reported", "unhandled", got "loud"',
        ),
        (
            "/api/demo.bytes/enqueue",
            b'{"content": {"text": true}}',
            "content.text: expected a string, got true",
        ),
        (
            COUNT,
            b'{"content": {"n": 1}, "requestId": "has space"}',
            'requestId: expected a string matching ^[A-Za-z0-9._:-]{1,128}$, got "has space"',
        ),
        (
            COUNT,
            b'{"content": {"n": 1}, "onConflict": "ignore"}',
            'onConflict: expected one of "reject", "existing", "replace", got "ignore"',
        ),
        (
            COUNT,
            b'{"content": {"n": 1}, "key": ""}',
            'key: expected a string of 1 to 256 characters, got ""',
        ),
        (
            COUNT,
            b'{"content": {"n": 1}, "delay": "soon"}',
            'delay: expected a number from 0 to 3155760000, got "soon"',
        ),
        (
            COUNT,
            b'{"content": {"n": 1}, "notBefore": "tomorrow"}',
            'notBefore: expected an RFC 3339 time with a time zone, got "tomorrow"',
        ),
        (
            "/api/demo.count/progress",
            b'{"id": "x", "wait": 99}',
            "wait: expected a number from 0 to 60, got 99",
        ),
        (
            "/api/demo.count/progress",
            b'{"id": 7}',
            "id: expected a string of 1 to 128 characters, got 7",
        ),
    ],
)
async def test_a_422_says_the_path_what_is_expected_and_what_was_given(
    client: httpx.AsyncClient, path: str, body: bytes, message: str
) -> None:
    error = await refused(client, path, body, 422)
    assert error["message"] == message


async def test_a_batch_item_is_named_by_its_index(client: httpx.AsyncClient) -> None:
    body = b'{"items": [{"content": {"n": 1}}, {"content": {"n": 1}, "requestId": 5}]}'
    response = await client.post("/api/demo.count/enqueue-batch", content=body, headers=JSON_TYPE)
    assert response.status_code == 200, response.text
    second = response.json()["items"][1]
    assert second["outcome"] == "refused"
    expected = "items[1].requestId: expected a string matching ^[A-Za-z0-9._:-]{1,128}$, got 5"
    assert second["error"]["message"] == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("wait=99", "wait: expected a number from 0 to 60, got 99"),
        ("wait=soon", 'wait: expected a number from 0 to 60, got "soon"'),
        ("since=1.5", "since: expected an integer, got 1.5"),
    ],
)
async def test_a_bad_query_parameter_says_its_range(
    client: httpx.AsyncClient, query: str, message: str
) -> None:
    response = await client.get(f"/api/jobs/{'0' * 32}?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == message
    listing = await client.get("/api/jobs?limit=0")
    assert listing.json()["error"]["message"] == "limit: expected an integer of 1 or more, got 0"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"content": {"n": 1', "the body must be JSON: unexpected end at byte 19"),
        (b'{"content": {"n": 1}} x', "the body must be JSON: trailing characters at byte 23"),
        (b'{"content": {"n": 1},}', "the body must be JSON: trailing comma in object at byte 21"),
        (b"", "the body must be JSON: it is empty"),
        (b"[1]", "body: expected an object, got [1]"),
        (b"{}", "content: expected any JSON value, got nothing"),
    ],
)
async def test_a_body_that_is_not_json_says_so_and_where(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    error = await refused(client, COUNT, body, 400)
    assert error["message"] == message
    assert "truncated" not in error["message"]


async def test_an_unknown_kind_lists_the_known_ones(client: httpx.AsyncClient) -> None:
    close = await refused(client, "/api/demo.cont/enqueue", b'{"content": {}}', 404)
    assert close["code"] == "unknown_kind"
    assert close["message"].startswith(
        'unknown kind "demo.cont" (did you mean "demo.count"?); '
        "known kinds: demo.bytes, demo.count, demo.echo, demo.fail,"
    )
    far = await refused(client, "/api/payroll/enqueue", b'{"content": {}}', 404)
    assert far["message"].startswith('unknown kind "payroll"; known kinds: demo.bytes, ')
    assert "did you mean" not in far["message"]


def test_types_in_words() -> None:
    ratio = Annotated[float, msgspec.Meta(gt=0, lt=1)]
    assert describe_type(ratio) == "a number more than 0 and less than 1"
    assert describe_type(Annotated[list[int], msgspec.Meta(min_length=1)]) == (
        "an array of at least 1 item"
    )
    assert describe_type(int | str | None) == "an integer or a string"
    assert describe_type(bool) == "true or false"
    assert describe_type(dict[str, int]) == "an object"


def test_states_read_as_english() -> None:
    phrases = [f"job j {state_phrase(s)}" for s in ("queued", "running", "succeeded", "stopped")]
    assert phrases == [
        "job j is queued",
        "job j is running",
        "job j succeeded",
        "job j was stopped",
    ]
