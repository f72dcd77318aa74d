"""What a new user sees when starting a node: a plugin module in the current directory
loads, a missing one is named with where it was looked for, and a port in use is one
line naming the setting (no URL that looks served). Real `asyncproc serve` /
`python app.py` processes."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support import ROOT, free_port, wait_until

pytestmark = pytest.mark.anyio

# The console script: unlike `python -m` or `-c`, it does not put the current
# directory on sys.path by itself.
CONSOLE_SCRIPT = Path(sys.executable).with_name("asyncproc")

PLUGIN = '''
from asyncproc import Registry

registry = Registry()


@registry.job("local.hello")
async def hello(ctx, content):
    """Say hello."""
    return {"hello": content}
'''


def node_env(**extra: str) -> dict[str, str]:
    """The environment minus every ASYNCPROC_ and PYTHONPATH setting, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ASYNCPROC_") and k != "PYTHONPATH"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def commands() -> list[list[str]]:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: pip install -e ."
    return [[str(CONSOLE_SCRIPT), "serve"], [sys.executable, str(ROOT / "app.py")]]


@pytest.mark.parametrize("how", ["asyncproc serve", "python app.py"])
async def test_a_plugin_module_in_the_current_directory_loads(tmp_path: Path, how: str) -> None:
    (tmp_path / "myjobs.py").write_text(PLUGIN, encoding="utf-8")
    port = free_port()
    command = commands()[0 if how == "asyncproc serve" else 1] + ["--port", str(port)]
    env = node_env(ASYNCPROC_PLUGINS="myjobs")
    log_path = tmp_path / "out.log"
    with log_path.open("wb") as out:
        process = await anyio.open_process(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    async with process, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def kinds() -> list[str] | None:
            if process.returncode is not None:
                raise AssertionError(f"exited with {process.returncode}: {log_path.read_text()}")
            try:
                response = await client.get("/api/kinds")
            except httpx.TransportError:
                return None
            return [item["kind"] for item in response.json()]

        try:
            names = await wait_until(kinds, lambda names: names is not None, timeout=30)
            assert names is not None
            assert "local.hello" in names
            assert f"node on http://127.0.0.1:{port}/" in log_path.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()


async def test_a_missing_plugin_module_says_where_it_was_looked_for(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [*commands()[0], "--port", str(free_port())],
            cwd=tmp_path,
            env=node_env(ASYNCPROC_PLUGINS="asyncproc.plugins.demo,myjobs"),
            check=False,
        )
    assert done.returncode == 2
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert lines == [
        f'asyncproc: plugin module "myjobs" not found on the Python path (the current directory '
        f"{tmp_path} included); it is named by the plugins setting (ASYNCPROC_PLUGINS, or "
        "plugins in the config file)"
    ]


@pytest.mark.parametrize("how", ["asyncproc serve", "python app.py"])
async def test_a_port_in_use_is_one_line_naming_the_setting(tmp_path: Path, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = commands()[0 if how == "asyncproc serve" else 1]
        with anyio.fail_after(60):
            done = await anyio.run_process(
                command, cwd=tmp_path, env=node_env(ASYNCPROC_PORT=str(port)), check=False
            )
    assert done.returncode == 2
    assert done.stdout == b""  # no URL as if it were serving
    assert done.stderr.decode().strip().splitlines() == [
        f"asyncproc: bad setting port: {port} is already in use on 127.0.0.1 (another server "
        "listens there); choose another with --port or ASYNCPROC_PORT"
    ]
