"""Messages for people: what was wrong with an input, said in plain words.

msgspec stops at the first problem and says it in its own terms ("Expected `int`,
got `str` - at `$.content.n`"). These helpers say that one problem well: the path
without `$.`, what is expected in words (with the type's range, length, pattern or
choices), and what was given: `content.n: expected an integer, got "ten"`.
They never raise: a message they cannot improve is passed on, tidied.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import inspect as mi

__all__ = [
    "describe_type",
    "explain",
    "invalid_json",
    "invalid_query",
    "invalid_setting",
    "invalid_value",
    "plugin_not_found",
    "state_phrase",
    "suggest",
    "unknown_field",
    "unknown_kind",
]

# "<problem> - at `<path>`" (the path is absent for a problem at the top).
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`")
_GOT = re.compile(r", got `(?P<got>[^`]*)`")
_MALFORMED = re.compile(r"^JSON is malformed: (?P<what>.*?) \(byte (?P<at>\d+)\)$")
# msgspec's own wording; anything else came from a type's `__post_init__`.
_MSGSPEC_WORDING = ("Expected `", "Invalid ")
_GIVEN_LIMIT = 40
_KNOWN_LIMIT = 20

_NOUNS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "null": "null",
    "object": "an object",
    "array": "an array",
    "bytes": "a base64 string",
    "datetime": "an RFC 3339 time",
    "date": "a date (YYYY-MM-DD)",
    "time": "a time (HH:MM:SS)",
    "uuid": "a UUID",
    "decimal": "a decimal number",
}


_Segment = str | int | None  # a field name, an index, or None for an unknown dict key


def invalid_value(error: msgspec.ValidationError, type_: Any, raw: bytes, root: str = "") -> str:
    """The message of a `ValidationError` from decoding `raw` as `type_`.

    `root` names the value itself (`content`); its fields are named under it
    (`content.n`). Without a root, fields go by their own names (`wait`) and the
    value itself is `body`.
    """
    try:
        value: Any = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        value = _NOTHING
    path, problem = explain(error, type_, value)
    return f"{_name(path, root)}: {problem}"


def invalid_setting(error: msgspec.ValidationError, type_: Any, value: Any) -> tuple[str, str]:
    """The key (`port`, `schedules[0].every`; empty for `value` itself) and the problem
    of a `ValidationError` from converting the settings `value` to `type_`."""
    path, problem = explain(error, type_, value, unknown="setting")
    return (_name(path, "") if path else ""), problem


def explain(
    error: msgspec.ValidationError, type_: Any, value: Any, *, unknown: str = "field"
) -> tuple[list[_Segment], str]:
    """Where in `value` the error is (a path of names and indexes) and what is wrong
    there, in words: `expected an integer, got "ten"`; `unknown` is what an unknown
    name is called."""
    text = str(error)
    match = _AT.match(text)
    problem = match.group("problem") if match else text
    path = _parse_path(match.group("path") if match else None)
    missing = _MISSING.match(problem)
    if missing:
        field = missing.group("field")
        field_type = _field_type(_type_at(type_, path), field)
        words = describe_type(field_type) if field_type is not None else "a value"
        return [*path, field], f"expected {words}, got nothing"
    extra = _UNKNOWN.match(problem)
    if extra:
        field = extra.group("field")
        known = _field_names(_type_at(type_, path))
        return [*path, field], unknown_field(field, known, unknown)
    if not problem.startswith(_MSGSPEC_WORDING):
        return path, problem  # a type's own check said it: keep its words
    expected_type = _type_at(type_, path)
    if expected_type is None:
        return path, _tidy(problem)
    expected = describe_type(expected_type)
    given = _given(value, path)
    if given is _NOTHING:  # a dict's value: msgspec does not say under which key
        got = _GOT.search(problem)
        noun = _NOUNS.get(got.group("got"), got.group("got")) if got else None
        return path, f"expected {expected}" + (f", got {noun}" if noun else "")
    return path, f"expected {expected}, got {_show(given)}"


def unknown_field(name: str, known: Iterable[str], what: str = "field") -> str:
    """`unknown field, did you mean "delay"? (known: n, delay)`."""
    names = list(known)
    close = suggest(name, names)
    message = f"unknown {what}"
    if close is not None:
        message += f", did you mean {_quote(close)}?"
    return message + (f" (known: {', '.join(names)})" if names else "")


def invalid_query(name: str, raw: str, type_: Any) -> str:
    """The message of a query parameter `name=raw` that is not a `type_`."""
    try:
        shown = _show(msgspec.json.decode(raw.encode()))
    except msgspec.DecodeError:
        shown = _show(raw)
    return f"{name}: expected {describe_type(type_)}, got {shown}"


def invalid_json(error: msgspec.DecodeError, data: bytes, what: str = "the body") -> str:
    """`the body must be JSON: <where it broke>` for a `DecodeError` of `data`."""
    text = str(error)
    if not data.strip():
        detail = "it is empty"
    elif text.startswith("Input data was truncated"):
        detail = f"unexpected end at byte {len(data)}"
    elif (malformed := _MALFORMED.match(text)) is not None:
        detail = f"{malformed.group('what')} at byte {malformed.group('at')}"
    else:
        detail = _tidy(text)
    return f"{what} must be JSON: {detail}"


def unknown_kind(name: str, known: Iterable[str]) -> str:
    """`unknown kind "x"; known kinds: a, b`, with a "did you mean" when one is close."""
    kinds = sorted(known)
    message = f"unknown kind {_quote(name)}"
    close = suggest(name, kinds)
    if close is not None:
        message += f" (did you mean {_quote(close)}?)"
    if not kinds:
        return message + "; no kinds are registered"
    listed = ", ".join(kinds[:_KNOWN_LIMIT])
    if len(kinds) > _KNOWN_LIMIT:
        listed += f" and {len(kinds) - _KNOWN_LIMIT} more (GET /api/kinds)"
    return f"{message}; known kinds: {listed}"


def plugin_not_found(module: str, named_by: str) -> str:
    """Where a plugin module was looked for, and what named it."""
    here = os.getcwd()
    on_path = any(os.path.abspath(entry or ".") == here for entry in sys.path)
    where = f"the current directory {here} {'included' if on_path else 'not on it'}"
    return (
        f"plugin module {_quote(module)} not found on the Python path ({where}); "
        f"it is named by {named_by}"
    )


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word` (a likely misspelling of it), else None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return close[0] if close else None


def state_phrase(state: str) -> str:
    """A job's state as the rest of a sentence that begins "job <id> ": `is running`,
    `succeeded`, `failed`, `was stopped`."""
    return {
        "queued": "is queued",
        "running": "is running",
        "succeeded": "succeeded",
        "failed": "failed",
        "stopped": "was stopped",
    }.get(str(state), f"is {state}")


def describe_type(type_: Any) -> str:
    """A type in words, with its constraints: `a number from 0 to 60`, `one of "a", "b"`."""
    try:
        info = type_ if isinstance(type_, mi.Type) else mi.type_info(type_)
    except (TypeError, ValueError):
        return "a value"
    return _words(info)


# -- describing types -----------------------------------------------------------------


def _words(info: mi.Type) -> str:
    info = _unwrap(info)
    if isinstance(info, mi.UnionType):
        options = [_unwrap(t) for t in info.types]
        shown = [t for t in options if not isinstance(t, mi.NoneType)] or options
        return " or ".join(_words(t) for t in shown)
    if isinstance(info, mi.IntType | mi.FloatType):
        noun = "an integer" if isinstance(info, mi.IntType) else "a number"
        return _ranged(noun, info.ge, info.gt, info.le, info.lt)
    if isinstance(info, mi.StrType):
        words = _sized("a string", info.min_length, info.max_length, "character")
        return words + (f" matching {info.pattern}" if info.pattern else "")
    if isinstance(info, mi.EnumType):
        return _one_of([member.value for member in info.cls])
    if isinstance(info, mi.LiteralType):
        return _one_of(list(info.values))
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return _sized("an array", info.min_length, info.max_length, "item")
    if isinstance(info, mi.TupleType):
        return f"an array of {len(info.item_types)} items"
    if isinstance(info, mi.DictType):
        return _sized("an object", info.min_length, info.max_length, "field")
    if isinstance(info, mi.StructType | mi.TypedDictType | mi.DataclassType):
        return "an object"
    if isinstance(info, mi.NoneType):
        return "null"
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.DateTimeType):
        return "an RFC 3339 time" + (" with a time zone" if info.tz else "")
    if isinstance(info, mi.AnyType | mi.RawType):
        return "any JSON value"
    name = type(info).__name__.removesuffix("Type").lower()
    return _NOUNS.get(name, f"a {name}")


def _unwrap(info: mi.Type) -> mi.Type:
    while isinstance(info, mi.Metadata):
        info = info.type
    return info


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _ranged(
    noun: str, ge: float | None, gt: float | None, le: float | None, lt: float | None
) -> str:
    low = ge if ge is not None else gt
    high = le if le is not None else lt
    if ge is not None and le is not None:
        return f"{noun} from {_number(ge)} to {_number(le)}"
    parts = []
    if low is not None:
        parts.append(
            f"of {_number(low)} or more" if ge is not None else f"more than {_number(low)}"
        )
    if high is not None:
        parts.append(
            f"of {_number(high)} or less" if le is not None else f"less than {_number(high)}"
        )
    return " ".join([noun, " and ".join(parts)]) if parts else noun


def _sized(noun: str, least: int | None, most: int | None, unit: str) -> str:
    if least is None and most is None:
        return noun
    if least is not None and most is not None:
        count = f"{least} to {most}" if least != most else str(least)
        return f"{noun} of {count} {unit}s"
    if least is not None:
        return f"{noun} of at least {least} {unit}{'s' if least != 1 else ''}"
    return f"{noun} of at most {most} {unit}{'s' if most != 1 else ''}"


def _one_of(values: list[Any]) -> str:
    values = [v.value if isinstance(v, enum.Enum) else v for v in values]
    return "one of " + ", ".join(_show(v) for v in values)


# -- walking a path -------------------------------------------------------------------


def _parse_path(text: str | None) -> list[_Segment]:
    if not text or not text.startswith("$"):
        return []
    path: list[_Segment] = []
    for name, index in _SEGMENT.findall(text[1:]):
        if name:
            path.append(name)
        elif index == "...":
            path.append(None)  # msgspec does not say which key of a dict
        else:
            path.append(int(index))
    return path


def _name(path: list[_Segment], root: str) -> str:
    text = root
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif segment is None:
            text += "[...]"
        else:
            text += f".{segment}" if text else segment
    return text or "body"


class _Nothing:
    pass


_NOTHING: Any = _Nothing()


def _given(value: Any, path: list[_Segment]) -> Any:
    """The value at `path` in `value`, or `_NOTHING`."""
    for segment in path:
        found = (isinstance(segment, str) and isinstance(value, dict) and segment in value) or (
            isinstance(segment, int) and isinstance(value, list) and segment < len(value)
        )
        if not found:
            return _NOTHING
        value = value[segment]
    return value


def _type_at(type_: Any, path: list[_Segment]) -> mi.Type | None:
    """The type expected at `path` inside `type_`, or None when it cannot be told."""
    try:
        info: mi.Type = mi.type_info(type_)
    except (TypeError, ValueError):
        return None
    for segment in path:
        found = _step(_unwrap(info), segment)
        if found is None:
            return None
        info = found
    return info


def _step(info: mi.Type, segment: _Segment) -> mi.Type | None:
    if isinstance(info, mi.UnionType):
        for option in info.types:
            found = _step(_unwrap(option), segment)
            if found is not None:
                return found
        return None
    if isinstance(segment, str):
        return _field_type(info, segment)
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return info.item_type
    if isinstance(info, mi.TupleType) and isinstance(segment, int):
        return info.item_types[segment] if segment < len(info.item_types) else None
    if isinstance(info, mi.DictType) and segment is None:
        return info.value_type
    return None


def _field_type(info: mi.Type | None, name: str) -> mi.Type | None:
    info = _unwrap(info) if info is not None else None
    if isinstance(info, mi.UnionType):
        for option in info.types:
            found = _field_type(option, name)
            if found is not None:
                return found
        return None
    if isinstance(info, mi.StructType | mi.TypedDictType | mi.DataclassType):
        for field in info.fields:
            if field.encode_name == name:
                return field.type
    if isinstance(info, mi.DictType):
        return info.value_type
    return None


def _field_names(info: mi.Type | None) -> list[str]:
    info = _unwrap(info) if info is not None else None
    if isinstance(info, mi.StructType | mi.TypedDictType | mi.DataclassType):
        return [field.encode_name for field in info.fields]
    return []


# -- showing values -------------------------------------------------------------------


def _show(value: Any) -> str:
    """A given value as compact JSON, cut short when long."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= _GIVEN_LIMIT else text[: _GIVEN_LIMIT - 1] + "…"


def _quote(text: str) -> str:
    return msgspec.json.encode(text).decode()


def _tidy(text: str) -> str:
    """msgspec's words without its backticks, starting in lower case."""
    text = text.replace("`", "")
    return text[:1].lower() + text[1:]
