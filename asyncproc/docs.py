"""The API reference (`docs/api.md`), rendered from the OpenAPI document.

    python -m asyncproc.docs                    # writes docs/api.md (default settings)
    python -m asyncproc.docs --url http://127.0.0.1:8000 -o -    # a running node's, to stdout

Without `--url` the document is the one a node with the default settings serves at
`GET /openapi.json` (the demo kinds and the built-in plugins). `tests/test_docs.py`
renders the served document again and compares, so the file in the repository stays
what the server says.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["default_document", "main", "render"]

COMMAND = "python -m asyncproc.docs"
PREFIX = "#/components/schemas/"
# An answer that this many calls give is listed once, under Errors.
COMMON = 5


def default_document() -> dict[str, Any]:
    """The OpenAPI document of a node with the default settings (no file, no environment)."""
    from .config import load_settings
    from .openapi import openapi_document
    from .server import create_app

    app = create_app(load_settings(environ={}))
    return openapi_document(app.state.service.registry)


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def _cell(text: str) -> str:
    """Text fit for a Markdown table cell (one line, no bare `|`)."""
    return " ".join(text.split()).replace("|", "\\|")


def _bounds(schema: dict[str, Any], low: str, high: str, unit: str = "") -> str:
    lo, hi = schema.get(low), schema.get(high)
    if lo is not None and hi is not None:
        return f" {lo}..{hi}{unit}"
    if lo is not None:
        return f" ≥ {lo}{unit}"
    if hi is not None:
        return f" ≤ {hi}{unit}"
    return ""


def type_of(schema: dict[str, Any]) -> str:
    """A short readable type for a JSON Schema (`string 1..256 chars`, `JobStatus | null`)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(PREFIX)
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " \\| ".join(type_of(option) for option in schema[key])
    if "const" in schema:
        return _code(json.dumps(schema["const"]))
    if "enum" in schema:
        return " \\| ".join(_code(f'"{value}"') for value in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " \\| ".join(type_of({**schema, "type": one}) for one in kind)
    if kind == "string" and "contentSchema" in schema:
        return f"string of {schema.get('contentMediaType', '')} {type_of(schema['contentSchema'])}"
    if kind == "string":
        text = "string" + _bounds(schema, "minLength", "maxLength", " chars")
        if "pattern" in schema:
            text += f" {_code(schema['pattern'])}"
        if "format" in schema:
            text += f" ({schema['format']})"
        return text
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(schema, 'minimum', 'maximum')}"
    if kind == "array":
        items = type_of(schema.get("items", {}))
        return f"array of {items}" + _bounds(schema, "minItems", "maxItems", " items")
    if kind == "object" and "properties" not in schema:
        values = schema.get("additionalProperties")
        return f"object of {type_of(values)}" if isinstance(values, dict) else "object"
    if "properties" in schema:  # an inline object: its fields
        fields = ", ".join(f"{name}: {type_of(sub)}" for name, sub in schema["properties"].items())
        return "{" + fields + "}"
    if kind is not None:
        return str(kind)
    return "any"


def _rules(schema: dict[str, Any]) -> str:
    """What a schema says beside its type: its description and default."""
    parts = [
        option["description"]
        for option in [schema, *schema.get("anyOf", [])]
        if option.get("description")
    ]
    if "default" in schema:
        parts.append(f"default {_code(json.dumps(schema['default']))}")
    return "; ".join(parts)


def _parameters(parameters: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| parameter | in | type | required | meaning |", "|---|---|---|---|---|"]
    for p in parameters:
        required = "yes" if p.get("required") else "no"
        text = _cell(p.get("description", ""))
        lines.append(
            f"| `{p['name']}` | {p['in']} | {type_of(p['schema'])} | {required} | {text} |"
        )
    return lines


def _media(content: dict[str, Any]) -> str:
    return ", ".join(
        f"{_code(media)} {type_of(entry['schema'])}" if entry.get("schema") else _code(media)
        for media, entry in content.items()
    )


def _answers(responses: dict[str, Any], common: set[tuple[str, str]]) -> list[str]:
    lines = ["| status | body | meaning |", "|---|---|---|"]
    shared = []
    for status, answer in responses.items():
        if (status, answer["description"]) in common:
            shared.append(f"[{status}](#{_error_anchor(status, answer['description'])})")
            continue
        body = _media(answer.get("content", {})) or "none"
        meaning = answer["description"]
        headers = answer.get("headers", {})
        if headers:
            meaning += " (headers: " + ", ".join(_code(h) for h in headers) + ")"
        lines.append(f"| {status} | {body} | {_cell(meaning)} |")
    if shared:
        lines.append(f"| {', '.join(shared)} | | the errors most calls share |")
    return lines


def _operation(
    path: str, method: str, op: dict[str, Any], common: set[tuple[str, str]]
) -> list[str]:
    lines = [f"### {method.upper()} {_code(path)}", "", op["summary"] + ".", ""]
    if op.get("description"):
        lines += [op["description"], ""]
    if op.get("parameters"):
        lines += [*_parameters(op["parameters"]), ""]
    body = op.get("requestBody")
    if body:
        lines += [f"Body: {_media(body['content'])}."]
        for entry in body["content"].values():
            if entry.get("schema", {}).get("description"):
                lines[-1] += " " + entry["schema"]["description"]
        lines.append("")
    lines += [*_answers(op["responses"], common), ""]
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f'<a id="{_anchor(name)}"></a>', f"### {name}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        lines += [f"Type: {type_of(schema)}.", ""]
        return lines
    required = set(schema.get("required", ()))
    lines += ["| field | type | required | notes |", "|---|---|---|---|"]
    for field, sub in properties.items():
        need = "yes" if field in required else "no"
        lines.append(f"| `{field}` | {type_of(sub)} | {need} | {_cell(_rules(sub))} |")
    if schema.get("additionalProperties") is False:
        lines += ["", "No other fields."]
    lines.append("")
    return lines


def _tags(paths: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for item in paths.values():
        for op in item.values():
            for tag in op.get("tags", ["other"]):
                if tag not in seen:
                    seen.append(tag)
    return seen


def _of_tag(paths: dict[str, Any], tag: str) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in paths.items():
        for method, op in item.items():
            if tag in op.get("tags", ["other"]):
                yield path, method, op


def _common(paths: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The answers (status, description) that at least `COMMON` calls share."""
    counts: dict[tuple[str, str], int] = {}
    answers: dict[tuple[str, str], dict[str, Any]] = {}
    for item in paths.values():
        for op in item.values():
            for status, answer in op["responses"].items():
                key = (status, answer["description"])
                counts[key] = counts.get(key, 0) + 1
                answers[key] = answer
    return {
        key: answers[key]
        for key, count in sorted(counts.items())
        if count >= COMMON and key[0] >= "400"
    }


def _error_anchor(status: str, description: str) -> str:
    return _anchor(f"error-{status}-{' '.join(description.split()[:3])}")


def render(document: dict[str, Any]) -> str:
    """The Markdown reference of an OpenAPI document."""
    paths: dict[str, Any] = document["paths"]
    common = _common(paths)
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    tags = _tags(paths)
    lines = [
        f"# {document['info']['title']} HTTP API reference",
        "",
        "<!-- Generated from GET /openapi.json by `" + COMMAND + "`: do not edit. -->",
        "",
        f"Rendered by `{COMMAND}` from the OpenAPI {document['openapi']} document that a node "
        "with the default settings serves at `GET /openapi.json` (the demo kinds loaded); a "
        "test keeps the two the same. The contract behind it is API.md: where this page is "
        "terse, API.md says what the calls mean. Every error body is `ErrorBody` unless a "
        "call says otherwise.",
        "",
        "## Calls",
        "",
    ]
    lines += [f"- [{tag}](#{_anchor('calls-' + tag)})" for tag in tags]
    lines += [f"- [Errors](#{_anchor('errors')})", f"- [Schemas](#{_anchor('schemas')})", ""]
    for tag in tags:
        lines += [f'<a id="{_anchor("calls-" + tag)}"></a>', f"## {tag}", ""]
        for path, method, op in _of_tag(paths, tag):
            lines += _operation(path, method, op, set(common))
    lines += [
        f'<a id="{_anchor("errors")}"></a>',
        "## Errors",
        "",
        "The answers most calls share (each call lists those it may give).",
        "",
        "| status | body | meaning |",
        "|---|---|---|",
    ]
    for (status, description), answer in common.items():
        body = _media(answer.get("content", {})) or "none"
        anchor = f'<a id="{_error_anchor(status, description)}"></a>'
        lines.append(f"| {anchor}{status} | {body} | {_cell(description)} |")
    lines.append("")
    lines += [f'<a id="{_anchor("schemas")}"></a>', "## Schemas", ""]
    for name in sorted(schemas):
        lines += _schema(name, schemas[name])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference; `-o -` prints it."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running node's base URL (default: the default settings)")
    parser.add_argument("-o", "--output", default="docs/api.md", help="the file, or - (stdout)")
    args = parser.parse_args(argv)
    if args.url:
        import httpx

        document = httpx.get(args.url.rstrip("/") + "/openapi.json", timeout=30).json()
    else:
        document = default_document()
    text = render(document)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
