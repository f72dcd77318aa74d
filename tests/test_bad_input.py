"""Bad input of API.md section 16: deep JSON, huge headers, other content types, and the
headers a handler may see. A real uvicorn server, memory backends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncproc.config import load_settings
from asyncproc.input_limits import MAX_JSON_DEPTH, json_too_deep
from asyncproc.server import create_app
from tests.support import api_client, job_finished

pytestmark = pytest.mark.anyio

ENQUEUE = "/api/demo.echo/enqueue"
JSON_TYPE = {"content-type": "application/json"}
CREDENTIALS = {
    "Authorization": "Bearer s3cret",
    "Cookie": "sid=1",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
}
DEFAULT_HIDDEN = {
    "X-Api-Key": "k-1",
    "X-Auth-Token": "t-1",
    "X-Amz-Security-Token": "a-1",
}
PAID = {"name": "paid", "kind": "demo.echo", "event": "order.paid", "content_field": "payload"}


def make_app(**values: Any) -> Any:
    return create_app(load_settings(environ={}, triggers=[PAID], **values))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_app()) as client:
        yield client


def nested(levels: int) -> str:
    """A JSON array `levels` deep: `[[[...]]]`."""
    return "[" * levels + "]" * levels


def enqueue_body(value_json: str) -> bytes:
    """An enqueue body of demo.echo whose content holds `value_json`: two levels above it."""
    return b'{"content": {"value": ' + value_json.encode() + b"}}"


def assert_error(response: httpx.Response, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


async def jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/jobs")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def echoed(client: httpx.AsyncClient, response: httpx.Response) -> dict[str, Any]:
    """What demo.echo returned for the job `response` created."""
    assert response.status_code == 202, response.text
    status = await job_finished(client, response.json()["id"])
    assert status["state"] == "succeeded", status
    result: dict[str, Any] = (await client.get(f"/api/jobs/{status['id']}/result")).json()
    return result


# -- JSON depth ----------------------------------------------------------------------------


async def test_json_64_levels_deep_is_taken_and_65_is_400(client: httpx.AsyncClient) -> None:
    # The body object is level 1 and the content object level 2: 62 more fit in.
    deepest = await client.post(ENQUEUE, content=enqueue_body(nested(62)), headers=JSON_TYPE)
    assert (await echoed(client, deepest))["content"]["value"] == json.loads(nested(62))
    refused = await client.post(ENQUEUE, content=enqueue_body(nested(63)), headers=JSON_TYPE)
    error = assert_error(refused, 400, "bad_request")
    assert "64 levels" in error["message"]
    assert len(await jobs(client)) == 1


async def test_json_a_thousand_levels_deep_is_400_not_500(client: httpx.AsyncClient) -> None:
    # ~2 KB that used to raise RecursionError inside the decoder.
    for body in (enqueue_body(nested(1000)), enqueue_body('{"a": ' * 1000 + "1" + "}" * 1000)):
        response = await client.post(ENQUEUE, content=body, headers=JSON_TYPE)
        assert_error(response, 400, "bad_request")
    batch = b'{"items": [' + enqueue_body(nested(1000)) + b"]}"
    response = await client.post("/api/demo.echo/enqueue-batch", content=batch, headers=JSON_TYPE)
    assert_error(response, 400, "bad_request")
    event = b'{"payload": ' + nested(1000).encode() + b"}"
    response = await client.post("/api/events/order.paid", content=event, headers=JSON_TYPE)
    assert_error(response, 400, "bad_request")
    schedule = b'{"kind": "demo.echo", "every": 60, "content": ' + nested(1000).encode() + b"}"
    response = await client.put("/api/schedules/deep", content=schedule, headers=JSON_TYPE)
    assert_error(response, 400, "bad_request")
    assert await jobs(client) == []
    assert (await client.get("/api/schedules/deep")).status_code == 404


async def test_brackets_inside_strings_do_not_count(client: httpx.AsyncClient) -> None:
    text = '[{"\\"[[' * 200  # escaped quotes too: the string goes on after each \"
    body = json.dumps({"content": {"text": text, "list": json.loads(nested(10))}}).encode()
    response = await client.post(ENQUEUE, content=body, headers=JSON_TYPE)
    assert (await echoed(client, response))["content"]["text"] == text


async def test_an_unterminated_string_after_many_brackets_is_a_quick_400(
    client: httpx.AsyncClient,
) -> None:
    # 65 brackets take the depth scan past its shortcut, and then 400 KB of `\"` never
    # close the string: a scan that retried at each quote would take hours here.
    body = b'{"content": ' + b"[" * 65 + b'"' + b'\\"' * 200_000
    response = await client.post(ENQUEUE, content=body, headers=JSON_TYPE)
    assert_error(response, 400, "bad_request")


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ax,:')
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=80,
    )


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=json_values(), limit=st.integers(min_value=0, max_value=6))
def test_the_depth_scan_agrees_with_the_decoded_value(value: Any, limit: int) -> None:
    body = json.dumps(value).encode()
    assert json_too_deep(body, limit) == (depth_of(value) > limit)


def test_the_depth_limit_is_64() -> None:
    assert MAX_JSON_DEPTH == 64
    assert not json_too_deep(nested(64).encode())
    assert json_too_deep(nested(65).encode())


# -- header size -----------------------------------------------------------------------------


async def test_headers_over_64_kib_answer_431_before_routing(client: httpx.AsyncClient) -> None:
    big = {"x-big": "a" * 70_000}
    response = await client.post(ENQUEUE, json={"content": {}}, headers=big)
    error = assert_error(response, 431, "headers_too_large")
    assert "65536" in error["message"]
    # Many small headers count together; an unknown route is refused the same way.
    many = [(f"x-h{i}", "b" * 1000) for i in range(70)]
    response = await client.post(ENQUEUE, json={"content": {}}, headers=many)
    assert_error(response, 431, "headers_too_large")
    response = await client.get("/no/such/route", headers=big)
    assert_error(response, 431, "headers_too_large")
    assert await jobs(client) == []


async def test_an_8_mb_header_is_refused_and_nothing_kept(client: httpx.AsyncClient) -> None:
    response = await client.post(ENQUEUE, json={"content": {}}, headers={"x-huge": "z" * 8_000_000})
    assert_error(response, 431, "headers_too_large")
    assert await jobs(client) == []


async def test_headers_under_64_kib_in_all_reach_the_handler(client: httpx.AsyncClient) -> None:
    value = "c" * 60_000
    response = await client.post(ENQUEUE, json={"content": {}}, headers={"x-large": value})
    assert (await echoed(client, response))["headers"]["x-large"] == value


# -- content type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'Application/JSON;charset="UTF-8"',
    ],
)
async def test_json_with_or_without_a_utf8_charset_is_taken(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await client.post(
        ENQUEUE, content=b'{"content": {"v": 1}}', headers={"content-type": content_type}
    )
    assert (await echoed(client, response))["content"] == {"v": 1}


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # what `curl -d` sends
        "text/plain",
        "application/json; charset=latin-1",
        "application/jsonx",
        "multipart/form-data; boundary=x",
    ],
)
async def test_another_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        ENQUEUE, content=b'{"content": {}}', headers={"content-type": content_type}
    )
    assert_error(response, 415, "unsupported_media_type")
    assert await jobs(client) == []


async def test_a_body_without_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(ENQUEUE, content=b'{"content": {}}')
    assert "content-type" not in response.request.headers
    assert_error(response, 415, "unsupported_media_type")
    assert await jobs(client) == []


async def test_every_json_call_checks_the_content_type(client: httpx.AsyncClient) -> None:
    job = (await client.post(ENQUEUE, json={"content": {}})).json()
    form = {"content-type": "application/x-www-form-urlencoded"}
    calls = [
        ("POST", "/api/demo.echo/enqueue-batch", b'{"items": [{"content": {}}]}'),
        ("POST", "/api/demo.echo/progress", b'{"id": "%s"}' % job["id"].encode()),
        ("POST", "/api/demo.echo/stop", b'{"id": "%s"}' % job["id"].encode()),
        ("POST", "/api/demo.echo/result", b'{"id": "%s"}' % job["id"].encode()),
        ("POST", "/api/demo.echo/release", b'{"key": "k"}'),
        ("POST", "/api/events/order.paid", b'{"payload": {}}'),
        ("PUT", "/api/schedules/s", b'{"kind": "demo.echo", "every": 60, "content": {}}'),
    ]
    for method, path, body in calls:
        response = await client.request(method, path, content=body, headers=form)
        assert_error(response, 415, "unsupported_media_type")
    assert [j["id"] for j in await jobs(client)] == [job["id"]]
    assert (await client.get("/api/schedules/s")).status_code == 404


async def test_a_post_without_a_body_needs_no_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/demo.count/enqueue", json={"content": {"n": 60, "delay": 1}})
    job = response.json()
    stop = await client.post(f"/api/jobs/{job['id']}/stop")
    assert "content-type" not in stop.request.headers
    assert stop.status_code in {200, 202}, stop.text
    # An empty JSON call is still a bad request, not a media type problem.
    empty = await client.post("/api/demo.echo/stop")
    assert_error(empty, 400, "bad_request")


# -- headers kept for the handler -------------------------------------------------------------


async def test_credentials_and_hidden_headers_never_reach_the_handler(
    client: httpx.AsyncClient,
) -> None:
    sent = {**CREDENTIALS, **DEFAULT_HIDDEN, "X-Tenant": "acme"}
    response = await client.post(ENQUEUE, json={"content": {}}, headers=sent)
    seen = (await echoed(client, response))["headers"]
    assert seen["x-tenant"] == "acme"
    hidden = {name.lower() for name in sent} - {"x-tenant"}
    assert not hidden & seen.keys()
    batch = await client.post(
        "/api/demo.echo/enqueue-batch", json={"items": [{"content": {}}]}, headers=sent
    )
    assert batch.status_code == 200, batch.text
    [item] = batch.json()["items"]
    status = await job_finished(client, item["status"]["id"])
    result = (await client.get(f"/api/jobs/{status['id']}/result")).json()
    assert set(result["headers"]) & {name.lower() for name in sent} == {"x-tenant"}


async def test_the_hidden_headers_setting_names_what_is_hidden() -> None:
    settings_ = load_settings(environ={"ASYNCPROC_HIDDEN_HEADERS": "X-Secret, x-other"})
    assert settings_.hidden_headers == ("x-secret", "x-other")
    app = make_app(hidden_headers="X-Secret, x-other")
    sent = {**CREDENTIALS, "X-Secret": "s", "X-Other": "o", "X-Api-Key": "k-1"}
    async with api_client(app) as client:
        response = await client.post(ENQUEUE, json={"content": {}}, headers=sent)
        seen = (await echoed(client, response))["headers"]
        event = await client.post("/api/events/order.paid", json={"payload": {}}, headers=sent)
        [item] = event.json()["items"]
        status = await job_finished(client, item["status"]["id"])
        from_event = (await client.get(f"/api/jobs/{status['id']}/result")).json()["headers"]
    for headers in (seen, from_event):
        # The setting replaces the default names; the credentials stay hidden whatever it says.
        assert headers["x-api-key"] == "k-1"
        assert not {"x-secret", "x-other"} & headers.keys()
        assert not {name.lower() for name in CREDENTIALS} & headers.keys()
