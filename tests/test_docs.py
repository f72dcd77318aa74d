"""`docs/api.md`, the API reference in the repository, is what the server's
`/openapi.json` says (rendered by `python -m asyncproc.docs`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asyncproc.config import load_settings
from asyncproc.docs import main, render, type_of
from asyncproc.server import create_app
from tests.support import ROOT, api_client

pytestmark = pytest.mark.anyio

REFERENCE = ROOT / "docs" / "api.md"


async def test_the_reference_is_the_served_document_rendered() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        document = (await client.get("/openapi.json")).json()
    assert REFERENCE.read_text(encoding="utf-8") == render(document), (
        "docs/api.md is not what /openapi.json says: run `python -m asyncproc.docs`"
    )


async def test_the_reference_names_every_call_and_schema() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        document = (await client.get("/openapi.json")).json()
    text = render(document)
    for path, item in document["paths"].items():
        for method in item:
            assert f"### {method.upper()} `{path}`" in text
    for name in document["components"]["schemas"]:
        assert f"### {name}\n" in text
    # Every link to a schema or an error lands on an anchor of the page.
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    assert set(re.findall(r"\]\(#([^)]+)\)", text)) <= anchors


def test_the_types_read_as_the_constraints_say() -> None:
    assert type_of({"type": "string", "minLength": 1, "maxLength": 256}) == "string 1..256 chars"
    assert type_of({"type": "integer", "minimum": 0}) == "integer ≥ 0"
    ref = {"$ref": "#/components/schemas/JobStatus"}
    assert type_of({"anyOf": [ref, {"type": "null"}]}) == "[JobStatus](#schema-jobstatus) \\| null"
    assert type_of({"enum": ["a", "b"]}) == '`"a"` \\| `"b"`'
    assert type_of({}) == "any"


def test_the_command_writes_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "api.md"
    assert main(["-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == REFERENCE.read_text(encoding="utf-8")


def test_the_readme_links_the_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The API", 1)[1].split("\n## ", 1)[0]
    assert "(docs/api.md)" in section
