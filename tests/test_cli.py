"""The `asyncproc` command in subprocesses against a real `python app.py` server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from asyncproc.cli import EXIT_FAILED, EXIT_OK, EXIT_STOPPED, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.support import NodeProcess, free_port, wait_until

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]
JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")
LONG_COUNT = '{"n": 10000, "delay": 0.05}'

# A shell that starts the test run in the background leaves SIGINT ignored in every
# child; this entry point restores Ctrl-C as a terminal would deliver it.
INTERACTIVE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from asyncproc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every ASYNCPROC_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCPROC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --port N` in a subprocess, once /health answers."""
    server = NodeProcess(clean_env(), tmp_path_factory.mktemp("server"), "server")
    try:
        server.wait_healthy(30)
        yield server.url
    finally:
        server.stop()


async def cli(
    url: str | None, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m asyncproc.cli [--url URL] ARGS...` to completion."""
    command = [sys.executable, "-m", "asyncproc.cli"]
    if url is not None:
        command += ["--url", url]
    with anyio.fail_after(60):
        return await anyio.run_process(
            [*command, *args], check=False, cwd=REPO, env=dict(env or clean_env())
        )


def text(stream: bytes) -> str:
    return stream.decode("utf-8", errors="replace")


async def api_status(url: str, job_id: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get(f"/api/jobs/{job_id}")
        response.raise_for_status()
        status: dict[str, object] = response.json()
        return status


async def until_state(url: str, job_id: str, *states: str) -> dict[str, object]:
    return await wait_until(lambda: api_status(url, job_id), lambda s: s["state"] in states)


# -- submit ---------------------------------------------------------------------------


async def test_submit_wait_prints_result(server_url: str) -> None:
    done = await cli(
        server_url, "submit", "demo.count", "--content", '{"n": 3, "delay": 0.01}', "--wait"
    )
    assert done.returncode == EXIT_OK, text(done.stderr)
    assert msgspec.json.decode(done.stdout) == {"counted": 3}
    assert "counting" in text(done.stderr)
    assert "Traceback" not in text(done.stderr)


async def test_submit_prints_id_then_status(server_url: str, tmp_path: Path) -> None:
    content = tmp_path / "content.json"
    content.write_text('{"greeting": "hello"}', encoding="utf-8")
    done = await cli(server_url, "submit", "demo.echo", "--content", f"@{content}")
    assert done.returncode == EXIT_OK, text(done.stderr)
    job_id = text(done.stdout).strip()
    assert JOB_ID.fullmatch(job_id)
    await until_state(server_url, job_id, "succeeded")

    shown = await cli(server_url, "status", job_id)
    assert shown.returncode == EXIT_OK
    assert re.search(r"^state\s+succeeded$", text(shown.stdout), re.MULTILINE)
    as_json = await cli(server_url, "status", job_id, "--json")
    status = msgspec.json.decode(as_json.stdout)
    assert (status["id"], status["state"], status["resultMime"]) == (
        job_id,
        "succeeded",
        "application/json",
    )
    result = await cli(server_url, "result", job_id)
    assert msgspec.json.decode(result.stdout)["content"] == {"greeting": "hello"}


@pytest.mark.parametrize(
    ("mode", "shown"),
    [("reported", ["the sky fell", "demo failure"]), ("unhandled", ["the sky fell", "unhandled"])],
)
async def test_submit_wait_failure_exit_code_and_message(
    server_url: str, mode: str, shown: list[str]
) -> None:
    content = f'{{"mode": "{mode}", "message": "the sky fell"}}'
    done = await cli(server_url, "submit", "demo.fail", "--content", content, "--wait")
    assert done.returncode == EXIT_FAILED
    assert done.stdout == b""
    for piece in shown:
        assert piece in text(done.stderr)
    job_id = JOB_ID.search(text(done.stderr))
    assert job_id is not None
    result = await cli(server_url, "result", job_id.group())
    assert result.returncode == EXIT_FAILED
    assert "the sky fell" in text(result.stderr)


# -- stop -------------------------------------------------------------------------------


async def test_stop_command_stops_a_running_job(server_url: str) -> None:
    submitted = await cli(server_url, "submit", "demo.count", "--content", LONG_COUNT)
    job_id = text(submitted.stdout).strip()
    await until_state(server_url, job_id, "running")

    stopped = await cli(server_url, "stop", job_id)
    assert stopped.returncode == EXIT_OK, text(stopped.stderr)
    assert job_id in text(stopped.stdout)
    final = await until_state(server_url, job_id, "stopped", "succeeded", "failed")
    assert final["state"] == "stopped"

    shown = await cli(server_url, "status", job_id)
    assert re.search(r"^state\s+stopped", text(shown.stdout), re.MULTILINE)
    result = await cli(server_url, "result", job_id)
    assert result.returncode == EXIT_STOPPED
    again = await cli(server_url, "stop", job_id, "--wait")
    assert again.returncode == EXIT_OK, "stopping a stopped job is fine"


async def test_stop_of_a_finished_job_is_refused(server_url: str) -> None:
    done = await cli(server_url, "submit", "demo.count", "--content", '{"n": 0}', "--wait")
    assert done.returncode == EXIT_OK
    job_id = JOB_ID.search(text(done.stderr))
    assert job_id is not None
    refused = await cli(server_url, "stop", job_id.group())
    assert refused.returncode == EXIT_USAGE
    assert "succeeded" in text(refused.stderr)
    assert len(text(refused.stderr).strip().splitlines()) == 1


async def test_ctrl_c_while_waiting_stops_the_job(server_url: str) -> None:
    command = [sys.executable, "-c", INTERACTIVE, "--url", server_url]
    command += ["submit", "demo.count", "--content", LONG_COUNT, "--wait"]
    async with await anyio.open_process(command, cwd=REPO, env=clean_env()) as process:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while (found := JOB_ID.search(text(seen))) is None:
                seen += await process.stderr.receive()
        job_id = found.group()
        await until_state(server_url, job_id, "running")

        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                seen += chunk
            returncode = await process.wait()

    assert returncode == EXIT_STOPPED, text(seen)
    assert "stopping job" in text(seen)
    assert f"job {job_id} was stopped" in text(seen)
    assert (await api_status(server_url, job_id))["state"] == "stopped"


# -- result, jobs, input errors --------------------------------------------------------


async def test_result_to_file_is_byte_for_byte(server_url: str, tmp_path: Path) -> None:
    payload = "caf\u00e9 \u2615\r\nline two\x00"
    content = msgspec.json.encode({"text": payload}).decode()
    done = await cli(server_url, "submit", "demo.bytes", "--content", content, "--wait")
    assert done.returncode == EXIT_OK
    assert done.stdout == b"", "binary results are not dumped on the terminal"
    assert "asyncproc result" in text(done.stderr)
    found = JOB_ID.search(text(done.stderr))
    assert found is not None
    job_id = found.group()

    target = tmp_path / "out.bin"
    saved = await cli(server_url, "result", job_id, "-o", str(target))
    assert saved.returncode == EXIT_OK
    assert target.read_bytes() == payload.encode()
    to_stdout = await cli(server_url, "result", job_id)
    assert to_stdout.stdout == payload.encode()

    report = tmp_path / "report.csv"
    done = await cli(
        server_url,
        "submit",
        "demo.report",
        "--content",
        '{"rows": 4, "delay": 0}',
        "--wait",
        "-o",
        str(report),
    )
    assert done.returncode == EXIT_OK
    assert report.read_bytes() == b"id,value\n1,1\n2,4\n3,9\n4,16\n"


async def test_result_on_stdout_ends_text_with_a_newline(server_url: str, tmp_path: Path) -> None:
    done = await cli(server_url, "submit", "demo.echo", "--content", '{"a": 1}', "--wait")
    assert done.returncode == EXIT_OK
    found = JOB_ID.search(text(done.stderr))
    assert found is not None
    job_id = found.group()
    async with httpx.AsyncClient(base_url=server_url) as http:
        exact = (await http.get(f"/api/jobs/{job_id}/result")).content
    assert not exact.endswith(b"\n")

    shown = await cli(server_url, "result", job_id)
    assert shown.returncode == EXIT_OK
    assert shown.stdout == exact + b"\n"  # the prompt starts on a line of its own
    target = tmp_path / "result.json"
    saved = await cli(server_url, "result", job_id, "-o", str(target))
    assert saved.returncode == EXIT_OK
    assert target.read_bytes() == exact  # a file stays byte-exact


async def test_messages_say_the_state_in_plain_english(server_url: str) -> None:
    running = await cli(server_url, "submit", "demo.count", "--content", LONG_COUNT)
    job_id = text(running.stdout).strip()
    await until_state(server_url, job_id, "running")
    early = await cli(server_url, "result", job_id)
    assert text(early.stderr).strip() == f"job {job_id} is running: no result yet"
    stopped = await cli(server_url, "stop", job_id, "--wait")
    assert stopped.returncode == EXIT_OK
    assert f"job {job_id} was stopped" in text(stopped.stderr)

    finished = await cli(server_url, "submit", "demo.count", "--content", '{"n": 0}', "--wait")
    found = JOB_ID.search(text(finished.stderr))
    assert found is not None
    refused = await cli(server_url, "stop", found.group())
    assert refused.returncode == EXIT_USAGE
    assert text(refused.stderr).strip() == (
        f"asyncproc: job {found.group()} succeeded (409 state_conflict)"
    )


async def test_jobs_table_lists_jobs(server_url: str) -> None:
    ids = []
    for i in range(2):
        done = await cli(server_url, "submit", "demo.echo", "--content", f'{{"i": {i}}}')
        ids.append(text(done.stdout).strip())
    for job_id in ids:
        await until_state(server_url, job_id, "succeeded")

    table = await cli(server_url, "jobs", "--kind", "demo.echo", "--limit", "200")
    assert table.returncode == EXIT_OK
    rows = {line.split()[0]: line for line in text(table.stdout).splitlines() if line.strip()}
    assert "ID" in rows
    for job_id in ids:
        assert "demo.echo" in rows[job_id]
        assert "succeeded" in rows[job_id]

    one = await cli(server_url, "jobs", "--kind", "demo.echo", "--limit", "1", "--json")
    page = msgspec.json.decode(one.stdout)
    assert [item["id"] for item in page["items"]] == [ids[-1]]
    assert page["next"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "demo.count", "--content", '{"n": -1}'],
            "content.n: expected an integer of 0 or more, got -1",
        ),
        (["submit", "no.such.kind", "--content", "{}"], "no.such.kind"),
        (["submit", "demo.count", "--content", "{not json"], "--content must be JSON: "),
        (["submit", "demo.count", "--content", "@/nonexistent/file.json"], "cannot read"),
        (["status", "0123456789abcdef0123456789abcdef"], "0123456789abcdef0123456789abcdef"),
    ],
)
async def test_bad_input_exits_2_with_one_line(
    server_url: str, args: list[str], message: str
) -> None:
    done = await cli(server_url, *args)
    assert done.returncode == EXIT_USAGE
    lines = text(done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert done.stdout == b""


async def test_url_from_environment_and_unreachable_server(server_url: str) -> None:
    listed = await cli(None, "jobs", "--json", env=clean_env(ASYNCPROC_URL=server_url))
    assert listed.returncode == EXIT_OK, text(listed.stderr)
    assert "items" in msgspec.json.decode(listed.stdout)

    nowhere = f"http://127.0.0.1:{free_port()}"
    down = await cli(nowhere, "jobs")
    assert down.returncode == EXIT_UNAVAILABLE
    assert "cannot reach" in text(down.stderr)
    assert "Traceback" not in text(down.stderr)
