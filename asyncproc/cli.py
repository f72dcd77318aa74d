"""The `asyncproc` command: `serve` runs a node; `submit`, `status`, `stop`, `result`
and `jobs` talk to a running server through the public API (`asyncproc.client`).

Exit codes: 0 done (the job succeeded), 1 the job failed, 2 bad input or a request
the server refused, 3 the job was stopped, 4 server unreachable or in error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from .config import LogLevel, Settings, client_defaults, load_settings
from .errors import ApiError, AsyncProcError, ConfigError
from .messages import invalid_json, state_phrase
from .model import JobState, JobStatus

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERRUPTED = 130

# Results up to this size with a textual MIME type are printed by `submit --wait`.
PRINT_LIMIT = 1_048_576
TEXT_MIMES = ("text/", "application/json", "application/xml", "application/csv")
TEXT_SUFFIXES = ("+json", "+xml")


class _InputError(AsyncProcError):
    """Raised for bad command-line input found before any request is sent."""


# -- serve ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    return load_settings(args.config, **overrides)


def serve(args: argparse.Namespace) -> int:
    """Run one node with uvicorn until interrupted; SIGTERM / Ctrl-C drains it first."""
    import uvicorn

    from .corked_http import http_protocol
    from .logs import configure_logging
    from .server import create_app
    from .serving import (
        CONNECTIONS_GRACE,
        DrainingServer,
        current_directory_on_path,
        listening_socket,
    )

    current_directory_on_path()
    settings = _settings(args)
    configure_logging(settings)
    app = create_app(settings)
    # Bound before serving: a port in use is one line naming the setting, not a URL
    # that looks served followed by uvicorn's error.
    sock = listening_socket(settings.host, settings.port)
    debug = settings.log_level is LogLevel.DEBUG
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvicorn's lines go through the handler of `configure_logging` (same format).
        log_config=None,
        log_level=args.log_level or ("debug" if debug else "warning"),
        access_log=args.access_log or debug,
        # The jobs' grace is spent before uvicorn's shutdown begins (DrainingServer).
        timeout_graceful_shutdown=CONNECTIONS_GRACE,
        http=http_protocol(),
    )
    announce = f"asyncproc {settings.role} node on http://{settings.host}:{settings.port}/"
    server = DrainingServer(config, app.state.drain, announce)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it held back once drained
        pass
    finally:
        sock.close()
    if not server.started:
        return 3  # uvicorn's start-up failure status (its lifespan refused to start)
    return 0


# -- output helpers --------------------------------------------------------------------


def _err(message: str) -> None:
    # Plain print, not rich: a message stays on one line whatever the terminal width.
    print(message, file=sys.stderr, flush=True)


def _percent(status: JobStatus) -> str:
    percent = status.progress.percent
    return "" if percent is None else f"{percent:.0f}%"


def _summary(status: JobStatus) -> str:
    parts = [str(status.state)]
    if status.stop_requested and not status.state.terminal:
        parts.append("stopping…")
    parts += [p for p in (_percent(status), status.progress.biz_step, status.progress.message) if p]
    return " ".join(parts)


class JobElapsedColumn(ProgressColumn):
    """The job's own running time (since its `startedAt`, until its `finishedAt`), not
    the bar's: a bar shown again after Ctrl-C, or for a job started earlier, is right."""

    def render(self, task: Task) -> Text:
        """`H:MM:SS`, or `-:--:--` while the job has not started."""
        started: datetime | None = task.fields.get("started")
        if started is None:
            return Text("-:--:--", style="progress.elapsed")
        finished: datetime | None = task.fields.get("finished")
        seconds = ((finished or datetime.now(UTC)) - started).total_seconds()
        # The server's clock, not this one, set startedAt: never show a negative time.
        shown = timedelta(seconds=max(0, int(seconds)))
        return Text(str(shown), style="progress.elapsed")


class ProgressView:
    """Shows a waiting job on stderr: a live rich bar on a terminal, else a line per step."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = TaskID(0)
        self._last: tuple[object, ...] | None = None

    def __enter__(self) -> ProgressView:
        if self._console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[message]}", markup=False),
                JobElapsedColumn(),
                console=self._console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "", total=None, message="", started=None, finished=None
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, status: JobStatus) -> None:
        """Show `status` (called on the client's loop thread; rich is thread-safe)."""
        if self._progress is None:
            key = (status.state, status.stop_requested, status.progress.biz_step)
            if key != self._last:
                self._last = key
                _err(f"{status.kind} {status.id}: {_summary(status)}")
            return
        step = status.progress.biz_step or ""
        label = f"{status.kind} {status.state}" + (f" · {step}" if step else "")
        if status.stop_requested and not status.state.terminal:
            label += " · stopping…"
        percent = status.progress.percent
        self._progress.update(
            self._task,
            description=label,
            total=None if percent is None else 100.0,
            completed=percent or 0.0,
            message=status.progress.message or "",
            started=status.started_at,
            finished=status.finished_at,
        )


def _print_error(status: JobStatus) -> None:
    error = status.error
    if error is None:
        _err(f"job {status.id} failed")
        return
    suffix = f" ({error.error_id})" if error.error_id else ""
    if error.biz_msg:
        _err(f"failed: {error.biz_msg}")
        if error.tech_msg and error.tech_msg != error.biz_msg:
            _err(f"  {error.tech_msg}{suffix}")
    else:
        _err(f"failed: {error.tech_msg or 'unknown error'}{suffix}")
    if error.tech_info:
        _err(error.tech_info.rstrip())


def _ended(status: JobStatus) -> int:
    """Say how an ended job ended (not its result); its exit code."""
    if status.state is JobState.FAILED:
        _print_error(status)
        return EXIT_FAILED
    if status.state is JobState.STOPPED:
        _err(f"job {status.id} {state_phrase(status.state)}")
        return EXIT_STOPPED
    return EXIT_OK


def _is_text(mime: str | None) -> bool:
    kind = (mime or "").split(";")[0].strip().lower()
    return kind.startswith(TEXT_MIMES) or kind.endswith(TEXT_SUFFIXES)


def _write(data: bytes, output: str | None, mime: str | None) -> None:
    """A result to `output`, or to stdout; a text result on stdout ends with a newline
    (so the prompt starts on a line of its own), anything else stays byte-exact."""
    if output is None:
        if _is_text(mime) and data and not data.endswith(b"\n"):
            data += b"\n"
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise _InputError(f"cannot write {output}: {exc.strerror}") from None
    _err(f"wrote {len(data)} bytes ({mime}) to {output}")


# -- client commands -----------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    url, token = client_defaults()
    return Client(args.url or url, args.token or token)


def _content(spec: str, option: str = "--content") -> Any:
    """The JSON value of an option: inline, or `@FILE` (`@-` for stdin)."""
    if spec.startswith("@"):
        name = spec[1:]
        try:
            raw = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise _InputError(f"cannot read {name}: {exc.strerror}") from None
    else:
        raw = spec.encode()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise _InputError(invalid_json(exc, raw, option)) from None


def submit(args: argparse.Namespace) -> int:
    """Queue a job; with --wait, show its progress and then its result or error."""
    content = _content(args.content)
    with _client(args) as client:
        status: JobStatus = client.enqueue(
            args.kind,
            content,
            request_id=args.request_id,
            key=args.key,
            on_conflict=args.on_conflict,
        )
        if not args.wait:
            print(status.id, flush=True)
            return EXIT_OK
        try:
            _err(f"submitted {status.kind} job {status.id}")
            with ProgressView() as view:
                status = client.wait(status.id, on_progress=view.update)
        except KeyboardInterrupt:
            status = _stop_and_wait(client, status.id)
        return _finish(client, status, args.output)


def _stop_and_wait(client: Any, job_id: str) -> JobStatus:
    _err(f"stopping job {job_id}… (Ctrl-C again to stop waiting; the stop stays requested)")
    try:
        client.stop(job_id)
    except ApiError as exc:
        if exc.status is None:  # not the "already finished" 409
            raise
    with ProgressView() as view:
        final: JobStatus = client.wait(job_id, on_progress=view.update)
    return final


def _finish(client: Any, status: JobStatus, output: str | None) -> int:
    if status.state is not JobState.SUCCEEDED:
        return _ended(status)
    if status.result_size is None:
        _err(f"job {status.id} succeeded (no result)")
        return EXIT_OK
    textual = _is_text(status.result_mime)
    if output is None and (not textual or status.result_size > PRINT_LIMIT):
        _err(
            f"job {status.id} succeeded: {status.result_size} bytes of {status.result_mime}; "
            f"save it with: asyncproc result {status.id} -o FILE"
        )
        return EXIT_OK
    data, mime = client.result(status.id)
    if data is not None:
        _write(data, output, mime)
    return EXIT_OK


def status_command(args: argparse.Namespace) -> int:
    """Print a job's status (human readable, or the API's JSON with --json)."""
    with _client(args) as client:
        status: JobStatus = client.status(args.id)
    if args.json:
        print(msgspec.json.encode(status).decode(), flush=True)
        return EXIT_OK
    rows: list[tuple[str, object]] = [
        ("id", status.id),
        ("kind", status.kind),
        ("state", f"{status.state}" + (" (stop requested)" if status.stop_requested else "")),
        ("progress", " ".join(filter(None, [_percent(status), status.progress.biz_step]))),
        ("message", status.progress.message),
    ]
    if status.error is not None:
        error = status.error
        rows += [
            ("bizMsg", error.biz_msg),
            ("techMsg", error.tech_msg),
            ("errorId", error.error_id),
        ]
    if status.result_size is not None:
        rows.append(("result", f"{status.result_size} bytes, {status.result_mime}"))
    rows += [
        ("key", status.key),
        ("attempt", status.attempt),
        ("created", status.created_at.isoformat()),
        ("started", status.started_at and status.started_at.isoformat()),
        ("finished", status.finished_at and status.finished_at.isoformat()),
        ("expires", status.expires_at.isoformat()),
    ]
    for name, value in rows:
        if value not in (None, ""):
            print(f"{name:<9} {value}")
    return EXIT_OK


def stop_command(args: argparse.Namespace) -> int:
    """Ask a job to stop; with --wait, wait until it has ended."""
    with _client(args) as client:
        status: JobStatus = client.stop(args.id)
        print(f"{status.id} {_summary(status)}", flush=True)
        if not args.wait:
            return EXIT_OK
        if not status.state.terminal:
            with ProgressView() as view:
                status = client.wait(status.id, on_progress=view.update)
    if status.state is JobState.FAILED:
        return _ended(status)
    # Stopped as asked, or it succeeded before the stop reached it: either way done.
    _err(f"job {status.id} {state_phrase(status.state)}")
    return EXIT_OK


def result_command(args: argparse.Namespace) -> int:
    """Write a succeeded job's result bytes to a file or stdout."""
    with _client(args) as client:
        try:
            data, mime = client.result(args.id)
        except ApiError as exc:
            if exc.status is None:
                raise
            if not exc.status.state.terminal:
                _err(f"job {args.id} {state_phrase(exc.status.state)}: no result yet")
                return EXIT_USAGE
            return _ended(exc.status)
    if data is None:
        _err(f"job {args.id} succeeded with no result")
        return EXIT_OK
    _write(data, args.output, mime)
    return EXIT_OK


def jobs_command(args: argparse.Namespace) -> int:
    """List jobs, newest first, as a table (or the API's JSON with --json)."""
    with _client(args) as client:
        page = client.jobs(
            kind=args.kind,
            state=args.state,
            key=args.key,
            limit=args.limit,
            cursor=args.cursor,
            parent=args.parent,
        )
    if args.json:
        print(msgspec.json.encode(page).decode(), flush=True)
        return EXIT_OK
    console = Console()
    if not console.is_terminal:
        # Piped output is read by scripts and people alike: never fold an id.
        console = Console(width=max(console.width, 160))
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=32)
    for name in ("KIND", "STATE", "PROGRESS", "STEP", "CREATED"):
        table.add_column(name, no_wrap=name != "STEP")
    for item in page.items:
        stopping = item.stop_requested and not item.state.terminal
        state = str(item.state) + (" (stopping)" if stopping else "")
        created = item.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            item.id, item.kind, state, _percent(item), item.progress.biz_step or "", created
        )
    if page.items:
        console.print(table)
    else:
        _err("no jobs")
    if page.next is not None:
        _err(f"more: asyncproc jobs --limit {args.limit} --cursor {page.next}")
    return EXIT_OK


# -- parser and entry point -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="asyncproc", description=__doc__)
    _server_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run a node (API and/or worker, per `role`)")
    run.add_argument("--config", help="TOML settings file (or ASYNCPROC_CONFIG)")
    run.add_argument("--host", help="override the `host` setting")
    run.add_argument("--port", type=int, help="override the `port` setting")
    run.add_argument(
        "--log-level", help="uvicorn's log level (default: warning; debug with log_level=debug)"
    )
    run.add_argument(
        "--access-log", action="store_true", help="log every request (on with log_level=debug)"
    )
    run.set_defaults(func=serve)

    # Accept --url/--token after the subcommand too; SUPPRESS keeps the global value.
    common = argparse.ArgumentParser(add_help=False)
    _server_options(common, argparse.SUPPRESS)

    sub = commands.add_parser("submit", parents=[common], help="queue a job")
    sub.add_argument("kind", help="job kind, such as demo.count")
    sub.add_argument("--content", required=True, help="JSON content, or @FILE (@- for stdin)")
    sub.add_argument("--request-id", help="client-chosen job id (makes submit idempotent)")
    sub.add_argument("--key", help="business key (uniqueness rules)")
    sub.add_argument(
        "--on-conflict",
        choices=["reject", "existing", "replace"],
        help="when the key is held: refuse (409), answer with the holder, or replace it",
    )
    sub.add_argument("--wait", action="store_true", help="show progress, then the result")
    sub.add_argument("-o", "--output", help="with --wait: write the result to this file")
    sub.set_defaults(func=submit)

    show = commands.add_parser("status", parents=[common], help="show a job's status")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print the status JSON")
    show.set_defaults(func=status_command)

    halt = commands.add_parser("stop", parents=[common], help="ask a job to stop")
    halt.add_argument("id")
    halt.add_argument("--wait", action="store_true", help="wait until the job has ended")
    halt.set_defaults(func=stop_command)

    fetch = commands.add_parser("result", parents=[common], help="fetch a job's result")
    fetch.add_argument("id")
    fetch.add_argument("-o", "--output", help="write to this file instead of stdout")
    fetch.set_defaults(func=result_command)

    listing = commands.add_parser("jobs", parents=[common], help="list jobs, newest first")
    listing.add_argument("--kind")
    listing.add_argument("--state", choices=[str(state) for state in JobState])
    listing.add_argument("--key")
    listing.add_argument("--limit", type=int, default=20, help="jobs per page (default 20)")
    listing.add_argument("--cursor", help="the `more:` cursor of the previous page")
    listing.add_argument("--json", action="store_true", help="print the page JSON")
    listing.add_argument("--parent", help="only the jobs this selection job started")
    listing.set_defaults(func=jobs_command)

    make = commands.add_parser("token", help="make a new API token and its [[tokens]] entry")
    make.add_argument("name", help="the token's name: the owner of the jobs it starts")
    make.add_argument(
        "--scopes",
        default="submit,read,stop",
        help="comma-separated, from submit, read, stop, admin (default submit,read,stop)",
    )
    make.set_defaults(func=token_command)

    from .cli_starting import add_commands

    add_commands(commands, common)
    return parser


def token_command(args: argparse.Namespace) -> int:
    """Print a new random token and the `[[tokens]]` table that admits it (its hash only)."""
    from .tokens import new_token

    token, digest = new_token()
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    # The same checks as at start-up: a bad name or scope is refused here already.
    load_settings(environ={}, tokens=[{"name": args.name, "hash": digest, "scopes": scopes}])
    entry = msgspec.json.encode
    print(f"token: {token}")
    print("# Give the token to its user; it is shown once and stored nowhere. Add to the config:")
    print("[[tokens]]")
    print(f"name = {entry(args.name).decode()}")
    print(f'hash = "{digest}"')
    print(f"scopes = [{', '.join(entry(scope).decode() for scope in scopes)}]")
    return EXIT_OK


def _server_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url", default=default, help="server URL (ASYNCPROC_URL, default http://127.0.0.1:8000)"
    )
    parser.add_argument("--token", default=default, help="bearer token (ASYNCPROC_TOKEN)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"asyncproc: bad setting {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        message = " ".join(exc.message.split())
        _err(f"asyncproc: {message} ({exc.status_code} {exc.code})")
        return EXIT_USAGE if exc.status_code < 500 else EXIT_UNAVAILABLE
    except httpx.TransportError as exc:
        _err(f"asyncproc: cannot reach {args.url or client_defaults()[0]}: {exc}")
        return EXIT_UNAVAILABLE
    except AsyncProcError as exc:
        print(f"asyncproc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("asyncproc: interrupted")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
