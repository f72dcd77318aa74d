"""Log lines on stderr (API.md section 16, settings `log_level` and `log_format`).

`configure_logging` is called by `asyncproc serve` (and `python app.py`), never by
`create_app`: an application embedding asyncproc keeps its own logging. It puts one
handler on the root logger, so asyncproc's lines (logger `asyncproc`) and uvicorn's
come out alike: readable text, or one JSON object per line with `time`, `level`,
`logger`, `message`, the record's extra fields (`jobId`, `kind`, ...) and, for an
exception, `traceback`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from .config import LogFormat, LogLevel, Settings

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "extra_fields"]

# The attributes every LogRecord has: anything else was passed as `extra`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
    # uvicorn's colourised copy of its message.
    | {"color_message"}
)
_encoder = msgspec.json.Encoder(enc_hook=str)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given to the log call as `extra`."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message>`, then the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        """One line (more with a traceback)."""
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as `{"time", "level", "logger", "message", ...extra, "traceback"?}`."""
        body: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(extra_fields(record))
        if record.exc_info:
            body["traceback"] = self.formatException(record.exc_info)
        return _encoder.encode(body).decode()


_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send log lines at `log_level` and above to stderr (or `stream`) in `log_format`;
    replaces the handler an earlier call installed. Answers the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_asyncproc", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._asyncproc = True  # type: ignore[attr-defined]
    json = settings.log_format is LogFormat.JSON
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    level = _LEVELS[settings.log_level]
    # Libraries stay at info even under debug: debug is for asyncproc's own lines.
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("asyncproc").setLevel(level)
    return handler
