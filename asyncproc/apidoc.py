"""Declarations of the HTTP calls, shared by the handlers and the OpenAPI document.

A handler decodes its query and path parameters through the `Param` that also
documents them, and its JSON body with the msgspec type the `Operation` names:
one declaration, so the document cannot say what the server does not do.
`asyncproc.openapi` turns the operations into the document; a plugin declares its
own with `Registry.document(...)` (or `hooks.openapi_operations`).

    LIMIT = Param("limit", "query", Annotated[int, Meta(ge=1)] | None, "page size")

    async def handler(request):
        limit = LIMIT.read(request) or 50

    registry.document(Operation("GET", "/api/things", "Things", "things", params=[LIMIT],
                                answers={200: Answer("A page", ThingPage)}))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from . import messages
from .errors import InvalidInput

__all__ = ["JSON", "Answer", "ErrorBody", "ErrorDetail", "Operation", "Param", "decode_json"]

JSON = "application/json"


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: a stable `code` and a readable `message`; some errors add fields
    (`jobId` of a key conflict, `field`, `backend`, ...)."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every non-2xx body, but the 409 of stop and result (those carry the job's status)."""

    error: ErrorDetail


def _integral(value: Any) -> Any:
    """`value` with every float that has no fraction made an int (5.0 -> 5)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def decode_json(data: bytes, type_: Any, decoder: msgspec.json.Decoder[Any] | None = None) -> Any:
    """Decode JSON `data` as `type_`, taking `5.0` where an integer is expected.

    JSON has one number type: JSON Schema (and so the OpenAPI document) counts 5.0
    as the integer 5, msgspec refuses it. Only a refusal of a float pays for the
    second pass; every other error is raised as msgspec raised it.
    """
    decode = decoder.decode if decoder is not None else None
    try:
        return decode(data) if decode else msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise
        fixed = msgspec.json.encode(_integral(msgspec.json.decode(data)))
        return decode(fixed) if decode else msgspec.json.decode(fixed, type=type_)


def _scalar(type_: Any) -> bool:
    """Whether a parameter of `type_` is a plain string on the wire (not JSON)."""
    schema = msgspec.json.schema(type_)
    kinds = [schema, *schema.get("anyOf", [])]
    return not any(k.get("type") in {"integer", "number", "boolean"} for k in kinds)


@dataclass(frozen=True)
class Param:
    """A query or path parameter: its name, msgspec type (constraints as `msgspec.Meta`),
    and what it means. `read` decodes it for the handler (422 naming it when it breaks
    its type); the document shows the same type's schema."""

    name: str
    where: Literal["query", "path"]
    type: Any
    description: str = ""

    def read(self, request: Any) -> Any:
        """The parameter's value in `request` (a Starlette request); None when absent (an
        empty query value counts as absent); `InvalidInput` naming it when it breaks its
        type, or when it is required and absent."""
        if self.where == "path":
            raw: str | None = request.path_params.get(self.name)
        else:
            raw = request.query_params.get(self.name)
            if raw == "":
                raw = None
        if raw is None:
            if self.required:
                raise InvalidInput(f"{self.name}: required (a {self.where} parameter)")
            return None
        try:
            if self.scalar:
                return msgspec.convert(raw, self.type)
            return decode_json(raw.encode(), self.value_type)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidInput(messages.invalid_query(self.name, raw, self.value_type)) from None

    @cached_property
    def scalar(self) -> bool:
        """Whether the value is a plain string on the wire (else it is read as JSON)."""
        return _scalar(self.type)

    @cached_property
    def empty_is_absent(self) -> bool:
        """Whether `read` takes an empty value for an absent one where the type itself
        refuses it (`?limit=`: an optional query parameter, not a string)."""
        if self.where != "query" or self.required:
            return False
        try:
            msgspec.convert("", self.value_type)
        except msgspec.ValidationError:
            return True
        return False

    @cached_property
    def required(self) -> bool:
        """Path parameters always are; a query parameter is when None is not allowed."""
        return self.where == "path" or self.value_type == self.type

    @cached_property
    def value_type(self) -> Any:
        """The type of a value that is there (`type` without None: a query string has no
        null)."""
        args = get_args(self.type)
        if get_origin(self.type) not in (Union, UnionType) or type(None) not in args:
            return self.type
        rest = [arg for arg in args if arg is not type(None)]
        return Union[tuple(rest)]  # noqa: UP007 - built from a list


@dataclass(frozen=True)
class Answer:
    """One documented response: a description, and the body's msgspec `type` (JSON), or a
    raw `schema` for another media type (`media`), or nothing (no body). `headers` names
    the response headers it sets, with their description."""

    description: str
    type: Any = None
    media: str = JSON
    schema: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One HTTP call: method, path (OpenAPI `{name}` syntax), summary, tag, its parameters,
    its JSON body's msgspec type (None: no JSON body), and its answers by status code.

    `bodies` are request bodies of other media types, with their JSON Schema (`{"text/plain":
    {"type": "string"}}`, `{"application/octet-stream": {}}`). `errors` are the error
    statuses of `openapi.ERROR_ANSWERS` it may answer besides `answers` (by default: those
    of a call with a JSON body, with parameters, or with neither). `common`: whether the
    answers every call of the node may give (`Hooks.openapi_answers`, e.g. an auth
    plugin's 401/403) are its answers too.
    """

    method: str
    path: str
    summary: str
    tag: str
    answers: Mapping[int, Answer]
    params: Sequence[Param] = ()
    body: Any = None
    description: str = ""
    errors: Sequence[int] | None = None
    bodies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    common: bool = True
