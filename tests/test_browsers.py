"""Safe answers and browsers of other sites (API.md section 16): nosniff on every answer,
active results as attachments, no-store on API answers, the page's CSP, foreign origins
refused, `cors_origins` served, the headers hidden from handlers. A real uvicorn server,
memory backends."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response

from asyncproc import Registry
from asyncproc.config import load_settings
from asyncproc.errors import ConfigError
from asyncproc.origins import is_own_origin, normalize_origin
from asyncproc.safe_answers import is_active_content
from asyncproc.service import EnqueueRequest
from tests.support import api_client, demo_app, job_finished, job_status, wait_until

pytestmark = pytest.mark.anyio

WEB = Path(__file__).resolve().parents[1] / "web"
FOREIGN = "https://evil.example"
FRIEND = "https://app.example.com"
HTML = "<h1>hi</h1><script>alert(1)</script>"

broken = Registry()


@broken.route("/api/broken", methods=["GET"])
async def broken_route(request: Request) -> Response:
    """A plugin route with a bug: the 500 it causes must carry the safety headers too."""
    raise RuntimeError("a bug")


@broken.route("/api/report.html", methods=["GET"])
async def plugin_html(request: Request) -> Response:
    """A plugin route answering HTML of its own making, with no policy of its own."""
    return Response(HTML, media_type="text/html")


@broken.route("/plugin-page", methods=["GET"])
async def plugin_page(request: Request) -> Response:
    """A plugin page that names its own policy."""
    return Response(
        HTML, headers={"Content-Security-Policy": "default-src 'self'"}, media_type="text/html"
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(demo_app(broken, cors_origins=f"{FRIEND}, http://localhost:3000")) as c:
        yield c


async def enqueue(client: httpx.AsyncClient, kind: str, content: Any) -> str:
    response = await client.post(f"/api/{kind}/enqueue", json={"content": content})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get("/api/jobs")).json()["items"]
    return items


def assert_error(response: httpx.Response, status_code: int, code: str) -> None:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


# -- headers on every answer ------------------------------------------------------------------


async def test_every_answer_says_nosniff(client: httpx.AsyncClient) -> None:
    job_id = await enqueue(client, "demo.count", {"n": 0})
    await job_finished(client, job_id)
    answers = [
        await client.get("/api/jobs"),
        await client.post("/api/demo.count/enqueue", json={"content": {"n": 0}}),
        await client.get(f"/api/jobs/{job_id}/result"),
        await client.post("/api/demo.count/enqueue", json={"content": {"n": -1}}),  # 422
        await client.get("/api/nothing/here/at/all"),  # 404
        await client.delete("/api/jobs"),  # 405
        await client.get("/health"),
        await client.get("/openapi.json"),
        await client.get("/"),
        await client.get("/static/app.js"),
        await client.get("/static/style.css"),
        await client.get("/api/broken"),  # 500
        await client.get("/api/jobs", headers={"x-big": "a" * 70_000}),  # 431
        await client.post(
            "/api/demo.count/enqueue", json={"content": {}}, headers={"origin": FOREIGN}
        ),
    ]
    assert [r.status_code for r in answers] == [
        200, 202, 200, 422, 404, 405, 200, 200, 200, 200, 200, 500, 431, 403
    ]  # fmt: skip
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff", response.request.url
        assert response.headers["cross-origin-resource-policy"] == "same-origin"
    # The event stream, read while it is open.
    running = await enqueue(client, "demo.count", {"n": 50, "delay": 0.2})
    async with client.stream("GET", f"/api/jobs/{running}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-content-type-options"] == "nosniff"
        assert stream.headers["cache-control"] == "no-store"
    await client.post(f"/api/jobs/{running}/stop")


async def test_api_answers_are_not_stored_and_the_page_files_may_be(
    client: httpx.AsyncClient,
) -> None:
    job_id = await enqueue(client, "demo.report", {"rows": 2, "delay": 0})
    await job_finished(client, job_id)
    for response in [
        await client.get("/api/jobs"),
        await client.get(f"/api/jobs/{job_id}"),
        await client.get(f"/api/jobs/{job_id}/result"),
        await client.post("/api/demo.report/result", json={"id": job_id}),
        await client.get("/api/kinds"),
        await client.get("/api/jobs/nope"),
        await client.post("/api/demo.count/enqueue", json={"content": {"n": 0}}),
    ]:
        assert response.headers["cache-control"] == "no-store", response.request.url
    static = await client.get("/static/app.js")
    assert "cache-control" not in static.headers
    assert static.headers["etag"]


# -- results a browser would run ----------------------------------------------------------------


async def test_an_html_result_is_an_attachment_on_both_result_routes(
    client: httpx.AsyncClient,
) -> None:
    job_id = await enqueue(client, "demo.page", {"html": HTML})
    status = await job_finished(client, job_id)
    assert status["state"] == "succeeded", status
    assert status["resultMime"] == "text/html; charset=utf-8"
    for response in [
        await client.get(f"/api/jobs/{job_id}/result"),
        await client.post("/api/demo.page/result", json={"id": job_id}),
    ]:
        assert response.status_code == 200
        assert response.text == HTML
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="{job_id}.html"'
        assert response.headers["x-content-type-options"] == "nosniff"
        # Opened anyway, it runs nothing as this origin.
        csp = response.headers["content-security-policy"]
        assert "sandbox" in csp
        assert "default-src 'none'" in csp


async def test_a_passive_result_is_shown_inline_unless_downloaded(
    client: httpx.AsyncClient,
) -> None:
    job_id = await enqueue(client, "demo.report", {"rows": 1, "delay": 0})
    await job_finished(client, job_id)
    inline = await client.get(f"/api/jobs/{job_id}/result")
    assert inline.headers["content-type"].startswith("text/csv")
    assert "content-disposition" not in inline.headers
    assert "content-security-policy" not in inline.headers
    download = await client.get(f"/api/jobs/{job_id}/result?download=1")
    assert download.headers["content-disposition"] == f'attachment; filename="{job_id}.csv"'


async def test_html_from_any_route_is_an_attachment_unless_it_names_its_policy(
    client: httpx.AsyncClient,
) -> None:
    plugin = await client.get("/api/report.html")
    assert plugin.headers["content-disposition"] == "attachment"
    assert "sandbox" in plugin.headers["content-security-policy"]
    page = await client.get("/plugin-page")
    assert "content-disposition" not in page.headers
    assert page.headers["content-security-policy"] == "default-src 'self'"


@pytest.mark.parametrize(
    "mime",
    [
        "text/html",
        "TEXT/HTML; charset=utf-8",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "application/atom+xml",
        "text/xsl",
        "multipart/x-mixed-replace; boundary=x",
        "",
        None,
        "html",
        "text/html, text/plain",
    ],
)
def test_active_content_types(mime: str | None) -> None:
    assert is_active_content(mime)


@pytest.mark.parametrize(
    "mime",
    [
        "application/json",
        "text/plain; charset=utf-8",
        "text/csv",
        "application/octet-stream",
        "image/png",
        "application/pdf",
    ],
)
def test_passive_content_types(mime: str) -> None:
    assert not is_active_content(mime)


# -- the page -----------------------------------------------------------------------------------


async def test_the_page_runs_under_a_strict_content_security_policy(
    client: httpx.AsyncClient,
) -> None:
    for path in ["/", "/jobs/abc", "/new", "/schedules", "/dead-letters"]:
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "content-disposition" not in response.headers
        directives = {
            d.split()[0]: d.split()[1:]
            for d in response.headers["content-security-policy"].split(";")
            if d.strip()
        }
        assert directives["default-src"] == ["'self'"]
        assert "script-src" not in directives
        assert "style-src" not in directives
        assert directives["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in response.headers["content-security-policy"]
        assert "'unsafe-eval'" not in response.headers["content-security-policy"]


class _InlineFinder(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block in an HTML file."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names:
            self.blocked.append("inline <script>")
        if tag == "style":
            self.blocked.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.blocked.append(f"{tag} {name}=")
            if value and value.strip().lower().startswith("javascript:"):
                self.blocked.append(f"{tag} {name}=javascript:")


def test_the_page_has_nothing_inline_its_policy_would_block() -> None:
    finder = _InlineFinder()
    finder.feed((WEB / "index.html").read_text(encoding="utf-8"))
    assert finder.blocked == []
    # Nor do the scripts write style attributes or run strings as code.
    for script in WEB.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"setAttribute\(\s*[\"']style|innerHTML|eval\(|new Function", text), (
            script.name
        )


# -- other origins -------------------------------------------------------------------------------


async def test_a_foreign_page_cannot_stop_a_job(client: httpx.AsyncClient) -> None:
    job_id = await enqueue(client, "demo.count", {"n": 100, "delay": 0.1})
    await wait_until(lambda: job_status(client, job_id), lambda s: s["state"] == "running")
    for headers in [
        {"origin": FOREIGN},
        {"origin": "null"},  # a sandboxed frame, a file: page
        {"origin": "http://127.0.0.1:1"},  # the same host, another port
        {"sec-fetch-site": "cross-site"},  # a browser that left Origin out
    ]:
        refused = await client.post(f"/api/jobs/{job_id}/stop", headers=headers)
        assert_error(refused, 403, "cross_origin")
        kind_call = await client.post("/api/demo.count/stop", json={"id": job_id}, headers=headers)
        assert_error(kind_call, 403, "cross_origin")
    status = await job_status(client, job_id)
    assert status["state"] == "running"
    assert status["stopRequested"] is False
    # The page's own origin (Host as the browser wrote it) and curl may.
    stopped = await client.post(
        f"/api/jobs/{job_id}/stop", headers={"origin": str(client.base_url)}
    )
    assert stopped.status_code == 202, stopped.text
    assert (await job_finished(client, job_id))["state"] == "stopped"


async def test_a_foreign_page_cannot_change_schedules(client: httpx.AsyncClient) -> None:
    schedule = {"kind": "demo.count", "content": {"n": 0}, "every": 3600, "paused": True}
    assert (await client.put("/api/schedules/s", json=schedule)).status_code == 201
    foreign = {"origin": FOREIGN}
    calls = [
        await client.put("/api/schedules/t", json=schedule, headers=foreign),
        await client.post("/api/schedules/s/trigger", headers=foreign),
        await client.post("/api/schedules/s/resume", headers=foreign),
        await client.delete("/api/schedules/s", headers=foreign),
        await client.patch("/api/schedules/s", json={}, headers=foreign),
    ]
    for response in calls:
        assert_error(response, 403, "cross_origin")
    names = [s["name"] for s in (await client.get("/api/schedules")).json()["items"]]
    assert names == ["s"]
    assert (await client.get("/api/schedules/s")).json()["paused"] is True
    assert await jobs(client) == []


async def test_a_cross_site_text_plain_enqueue_queues_nothing(client: httpx.AsyncClient) -> None:
    body = b'{"content": {"n": 0}}'
    plain = {"content-type": "text/plain"}
    from_curl = await client.post("/api/demo.count/enqueue", content=body, headers=plain)
    assert_error(from_curl, 415, "unsupported_media_type")
    cross_site = await client.post(
        "/api/demo.count/enqueue", content=body, headers={**plain, "origin": FOREIGN}
    )
    assert_error(cross_site, 403, "cross_origin")
    assert "access-control-allow-origin" not in cross_site.headers
    assert await jobs(client) == []


async def test_a_foreign_page_may_read_but_gets_no_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs", headers={"origin": FOREIGN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(
        "/api/demo.count/enqueue",
        headers={"origin": FOREIGN, "access-control-request-method": "POST"},
    )
    assert_error(preflight, 403, "cross_origin")
    assert "access-control-allow-origin" not in preflight.headers


async def test_an_allowed_origin_gets_what_cors_needs(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/api/demo.count/enqueue",
        headers={
            "origin": FRIEND,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-request-tag",
        },
    )
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == FRIEND
    methods = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE"} <= methods
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-request-tag"} <= allowed
    assert int(preflight.headers["access-control-max-age"]) > 0
    assert "origin" in preflight.headers["vary"].lower()

    later = {"content": {"n": 0}, "delay": 60}  # still queued when it is stopped
    response = await client.post("/api/demo.count/enqueue", json=later, headers={"origin": FRIEND})
    assert response.status_code == 202, response.text
    assert response.headers["access-control-allow-origin"] == FRIEND
    assert "origin" in response.headers["vary"].lower()
    assert "location" in response.headers["access-control-expose-headers"].lower()
    error = await client.get("/api/jobs/nope", headers={"origin": FRIEND})
    assert error.status_code == 404
    assert error.headers["access-control-allow-origin"] == FRIEND
    # Listed as `http://localhost:3000`, matched as the browser writes it.
    other = await client.post(
        f"/api/jobs/{response.json()['id']}/stop", headers={"origin": "http://LOCALHOST:3000"}
    )
    assert other.status_code == 200, other.text
    assert other.headers["access-control-allow-origin"] == "http://LOCALHOST:3000"


async def test_without_cors_origins_no_cors_headers_at_all() -> None:
    async with api_client(demo_app()) as client:
        response = await client.get("/api/jobs", headers={"origin": FOREIGN})
        assert "access-control-allow-origin" not in response.headers
        assert "vary" not in response.headers
        refused = await client.post("/api/jobs/x/stop", headers={"origin": FRIEND})
        assert_error(refused, 403, "cross_origin")


@pytest.mark.parametrize(
    ("origin", "host", "own"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("https://example.com", "example.com", True),  # TLS ended by a proxy that kept Host
        ("https://example.com", "example.com:443", True),
        ("http://example.com:80", "example.com", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://EXAMPLE.com", "example.COM", True),
        ("https://example.com", "example.com:8443", False),
        ("https://evil.example", "example.com", False),
        ("https://example.com.evil.example", "example.com", False),
        ("https://evil.example.com", "example.com", False),
        ("https://evilexample.com", "example.com", False),
        ("http://", "", False),
        ("null", "example.com", False),
        ("file://", "example.com", False),
        ("http://example.com:x", "example.com", False),
        ("http://example.com", None, False),
    ],
)
def test_own_origin(origin: str, host: str | None, own: bool) -> None:
    assert is_own_origin(origin, host) is own


# -- settings ------------------------------------------------------------------------------------


def test_cors_origins_from_env_and_toml(tmp_path: Path) -> None:
    env = load_settings(environ={"ASYNCPROC_CORS_ORIGINS": "https://a.example, http://b:3000"})
    assert env.cors_origins == ("https://a.example", "http://b:3000")
    config = tmp_path / "asyncproc.toml"
    config.write_text('cors_origins = ["https://a.example"]\n')
    assert load_settings(config, environ={}).cors_origins == ("https://a.example",)
    assert load_settings(environ={}).cors_origins == ()
    assert normalize_origin("HTTPS://A.example:443/") == "https://a.example"
    assert normalize_origin("http://[::1]:8000") == "http://[::1]:8000"


@pytest.mark.parametrize(
    "value", ["*", "a.example", "https://a.example/app", "ftp://a.example", "https://a:99999"]
)
def test_a_bad_cors_origin_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"ASYNCPROC_CORS_ORIGINS": value})
    assert raised.value.key == "cors_origins"


# -- headers kept for a handler -------------------------------------------------------------------


async def test_the_service_hides_the_setting_names_whoever_passes_headers() -> None:
    """A plugin or trigger that hands the service headers directly gets them filtered too."""
    app = demo_app(hidden_headers="x-secret")
    sent = {"Authorization": "Bearer t", "Proxy-Authorization": "Basic x", "X-Secret": "s"}
    async with api_client(app) as client:
        job, _ = await app.state.service.enqueue(
            "demo.echo",
            EnqueueRequest(content=msgspec.Raw(b"{}")),
            headers={**sent, "X-Tenant": "acme"},
        )
        await job_finished(client, job.id)
        seen = (await client.get(f"/api/jobs/{job.id}/result")).json()["headers"]
    assert seen == {"x-tenant": "acme"}
