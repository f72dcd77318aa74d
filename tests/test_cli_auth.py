"""The command line with auth: `asyncproc token` makes a token and its `[[tokens]]`
entry, and `submit`/`status` send `--token` / `ASYNCPROC_TOKEN` to a server that
needs one (a `python app.py` process reading that entry)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from asyncproc.cli import EXIT_OK, EXIT_USAGE
from asyncproc.config import load_settings
from tests.support import NodeProcess
from tests.test_cli import JOB_ID, clean_env, cli, text

pytestmark = pytest.mark.anyio


async def make_token(*args: str) -> tuple[str, str]:
    """`asyncproc token ARGS`: the token and the TOML it printed."""
    made = await cli(None, "token", *args)
    assert made.returncode == EXIT_OK, text(made.stderr)
    output = text(made.stdout)
    token = re.search(r"^token: (\S+)$", output, re.MULTILINE)
    assert token is not None, output
    return token.group(1), output


async def test_token_prints_a_token_and_the_entry_that_admits_it() -> None:
    token, output = await make_token("alice", "--scopes", "submit,read")
    entry = tomllib.loads(output.split("\n", 1)[1])["tokens"][0]
    assert entry == {
        "name": "alice",
        "hash": "sha256:" + hashlib.sha256(token.encode()).hexdigest(),
        "scopes": ["submit", "read"],
    }
    assert len(token) >= 40
    assert (await make_token("alice"))[0] != token  # random each time
    refused = await cli(None, "token", "alice", "--scopes", "submit,write")
    assert refused.returncode == EXIT_USAGE
    assert "write" in text(refused.stderr)


async def test_the_client_sends_its_token(tmp_path: Path) -> None:
    token, output = await make_token("carol", "--scopes", "submit,read,stop")
    config = tmp_path / "asyncproc.toml"
    config.write_text(output.split("\n", 1)[1], encoding="utf-8")
    assert load_settings(config, environ={}).tokens[0].name == "carol"
    server = NodeProcess(clean_env(ASYNCPROC_CONFIG=str(config)), tmp_path, "server")
    try:
        server.wait_healthy(30)
        content = '{"n": 1, "delay": 0.01}'
        anonymous = await cli(server.url, "submit", "demo.count", "--content", content)
        assert anonymous.returncode == EXIT_USAGE
        assert "needs a bearer token (401 unauthorized)" in text(anonymous.stderr)
        submitted = await cli(
            server.url, "submit", "demo.count", "--content", content, "--token", token
        )
        assert submitted.returncode == EXIT_OK, text(submitted.stderr)
        found = JOB_ID.search(text(submitted.stdout))
        assert found is not None
        shown = await cli(
            server.url, "status", found.group(0), "--json", env=clean_env(ASYNCPROC_TOKEN=token)
        )
        assert shown.returncode == EXIT_OK, text(shown.stderr)
        assert '"owner":"carol"' in text(shown.stdout).replace(" ", "")
    finally:
        server.stop()
