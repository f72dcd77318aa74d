"""JSON Schemas of MyLab.AsyncProcessor API v2's answers and messages, written for these
tests from the fields MyLab's published documents list (mylab-asyncproc-api-v2.yml,
callback-msg-schema.json, queue-message-schema.json), and a checker.

Stricter than the documents where asyncproc promises more: no field beyond the listed
ones, and absent values left out (never null).
"""

from __future__ import annotations

from typing import Any

import jsonschema

PROCESSING_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "bizMgs": {"type": "string"},
        "techMgs": {"type": "string"},
        "techInfo": {"type": "string"},
        "errorId": {"type": "string"},
    },
    "additionalProperties": False,
}

REQUEST_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "processStep": {"enum": ["pending", "processing", "completed"]},
        "bizStep": {"type": "string"},
        "successful": {"type": "boolean"},
        "error": PROCESSING_ERROR,
        "resultSize": {"type": "integer", "minimum": 0},
        "resultMime": {"type": "string"},
    },
    "required": ["processStep", "successful"],
    "additionalProperties": False,
}

REQUEST_DETAILS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": REQUEST_STATUS,
        "resObj": {},
        "resBin": {"type": "string", "contentEncoding": "base64"},
    },
    "required": ["id", "status"],
    "additionalProperties": False,
}

CALLBACK_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reqId": {"type": "string"},
        "newProcStep": {"enum": ["Pending", "Processing", "Completed"]},
        "newBizStep": {"type": "string"},
        "error": {**PROCESSING_ERROR, "required": ["errorId"]},
        "resObj": {},
        "resBin": {"type": "string"},
    },
    "required": ["reqId"],
    "additionalProperties": False,
}

QUEUE_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "content": {}},
    "required": ["id", "content"],
    "additionalProperties": False,
}


def checked(value: Any, schema: dict[str, Any]) -> Any:
    """`value`, once it is valid under `schema` (else the test fails naming the problem)."""
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
    return value
