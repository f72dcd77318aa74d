"""Log lines on stderr (API.md section 16, settings `log_level` and `log_format`).

`configure_logging` is called by `asyncproc serve` (and `python app.py`), never by
`create_app`: an application embedding asyncproc keeps its own logging. It puts one
handler on the root logger, so asyncproc's lines (logger `asyncproc`) and uvicorn's
come out alike: readable text, or one JSON object per line with `time`, `level`,
`logger`, `message`, the record's extra fields (`jobId`, `kind`, ...) and, for an
exception, `traceback`.

The handler writes the lines logged during one turn of the event loop with one write
(`TurnBufferedHandler`): a worker finishing a thousand jobs a second would otherwise
make a write system call for every line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import weakref
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from .config import LogFormat, LogLevel, Settings

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "TurnBufferedHandler",
    "configure_logging",
    "extra_fields",
]

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


# The last second `_time` wrote, and its text up to the seconds.
_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _time(record: logging.LogRecord) -> str:
    """`datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")` with a
    `Z`, the date and time of day made once a second rather than once a line."""
    global _second
    fraction, whole = math.modf(record.created)
    # Rounded to the microsecond half to even, as `datetime.fromtimestamp` does, and
    # then cut to the millisecond, as `isoformat` does: the very same text.
    micros = round(fraction * 1e6)
    seconds = int(whole)
    if micros >= 1_000_000:
        micros -= 1_000_000
        seconds += 1
    elif micros < 0:
        micros += 1_000_000
        seconds -= 1
    cached = _second
    if cached[0] != seconds:
        moment = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        cached = _second = (seconds, moment.isoformat(timespec="seconds"))
    return f"{cached[1]}.{micros // 1000:03d}Z"


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


class TurnBufferedHandler(logging.StreamHandler[IO[str]]):
    """A stream handler that writes the lines of one event-loop turn with one write.

    A line logged on a thread that runs an event loop waits for the end of the loop's
    turn (the turn's first line schedules the write with `call_soon`); a line logged
    anywhere else (another thread, no running loop) is written at once, after the
    lines still waiting: lines come out in the order they were logged, whatever the
    thread. `flush` writes the waiting lines; `logging.shutdown` calls it when the
    process exits, normally or by an unhandled exception. A process killed outright
    (SIGKILL) may lose the lines of at most one loop turn.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        # The loop whose next turn writes the waiting lines, if one was asked to.
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        _buffered_handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Format the line; write it at the end of this loop turn, or now off a loop."""
        # Called with the handler's lock held (`Handler.handle`).
        try:
            self._waiting.append(self.format(record) + self.terminator)
            # The private getter: `get_running_loop` raises off a loop, and an
            # exception costs more than the line on a thread.
            loop = asyncio._get_running_loop()
            if loop is None:
                self._write_waiting()
            elif self._turn_loop is not loop:
                self._turn_loop = loop
                loop.call_soon(self._end_of_turn, loop)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the waiting lines and flush the stream."""
        self.acquire()
        try:
            if self._waiting:
                self._write_waiting()
            else:
                super().flush()
        finally:
            self.release()

    def _write_waiting(self) -> None:
        text = "".join(self._waiting)
        # Dropped even if the write fails: a broken stream must not pile lines up.
        self._waiting.clear()
        self.stream.write(text)
        self.stream.flush()

    def _forget_waiting(self) -> None:
        self._waiting.clear()
        self._turn_loop = None

    def _end_of_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        self.acquire()
        try:
            if self._turn_loop is loop:
                self._turn_loop = None
            if self._waiting:
                self._write_waiting()
        except Exception:
            # As a failed write of one line would: reported on stderr, never raised
            # into the loop (whose error would be logged here again).
            lost = logging.makeLogRecord({"msg": "(log lines of one loop turn)"})
            self.handleError(lost)
        finally:
            self.release()


_buffered_handlers: weakref.WeakSet[TurnBufferedHandler] = weakref.WeakSet()


def _forget_parent_lines() -> None:
    # The parent writes the lines waiting when it forked; the child writing them too
    # would print them twice.
    for handler in list(_buffered_handlers):
        handler._forget_waiting()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_lines)


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
    for old in list(root.handlers):
        if getattr(old, "_asyncproc", False):
            root.removeHandler(old)
            old.flush()  # its waiting lines before the new handler's
    handler = TurnBufferedHandler(stream or sys.stderr)
    handler._asyncproc = True  # type: ignore[attr-defined]
    json = settings.log_format is LogFormat.JSON
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    level = _LEVELS[settings.log_level]
    # Libraries stay at info even under debug: debug is for asyncproc's own lines.
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("asyncproc").setLevel(level)
    return handler
