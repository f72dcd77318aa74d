"""The command-line ways to start jobs beyond `submit`: `batch`, `schedules`,
`schedule pause|resume|run`, `event`."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from .cli import EXIT_OK, EXIT_USAGE, _client, _content, _err
from .messages import state_phrase

__all__ = ["add_commands"]


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        # Piped output is read by scripts and people alike: never fold an id.
        console = Console(width=max(console.width, 160))
    return console


def batch_command(args: argparse.Namespace) -> int:
    """Queue one job per key (same content) or per item of a JSON list; one line each."""
    if (args.keys is None) == (args.items is None):
        _err("asyncproc: give --keys (with --content) or --items")
        return EXIT_USAGE
    with _client(args) as client:
        if args.keys is not None:
            keys = [key.strip() for key in args.keys.split(",") if key.strip()]
            content = _content(args.content) if args.content is not None else {}
            outcomes = client.enqueue_batch(
                args.kind, keys=keys, content=content, on_conflict=args.on_conflict
            )
            labels = keys
        else:
            items = _content(args.items, "--items")
            if not isinstance(items, list):
                _err("asyncproc: --items must be a JSON list of items")
                return EXIT_USAGE
            outcomes = client.enqueue_batch(args.kind, items=items, on_conflict=args.on_conflict)
            labels = [str(i) for i in range(len(items))]
    if args.json:
        print(msgspec.json.encode(outcomes).decode(), flush=True)
        return EXIT_OK
    refused = 0
    for label, item in zip(labels, outcomes, strict=True):
        if item.status is not None:
            print(f"{label}\t{item.outcome}\t{item.status.id}", flush=True)
        else:
            refused += 1
            error = item.error or {}
            print(f"{label}\trefused\t{error.get('code')}: {error.get('message')}", flush=True)
    _err(f"{len(outcomes) - refused} queued or found, {refused} refused")
    return EXIT_OK if refused == 0 else EXIT_USAGE


def schedules_command(args: argparse.Namespace) -> int:
    """List the schedules as a table (or JSON)."""
    with _client(args) as client:
        items = client.schedules()
    if args.json:
        print(msgspec.json.encode(items).decode(), flush=True)
        return EXIT_OK
    if not items:
        _err("no schedules")
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for name in ("NAME", "KIND", "WHEN", "NEXT RUN", "LAST", "STATE"):
        table.add_column(name, no_wrap=name != "LAST")
    for item in items:
        when = item.get("cron") or f"every {item.get('every'):g}s"
        recent = item.get("recent") or []
        last = f"{recent[0]['outcome']} {recent[0].get('jobId') or ''}".strip() if recent else ""
        table.add_row(
            item["name"],
            item["kind"],
            f"{when} ({item.get('timezone', 'UTC')})",
            str(item.get("nextRunAt") or ""),
            last,
            "paused" if item.get("paused") else "active",
        )
    _console().print(table)
    return EXIT_OK


def schedule_command(args: argparse.Namespace) -> int:
    """Pause or resume a schedule, or run it now."""
    action = "trigger" if args.action == "run" else args.action
    with _client(args) as client:
        answer: dict[str, Any] = client.schedule_action(args.name, action)
    if action == "trigger":
        print(answer["id"], flush=True)
        _err(f"schedule {args.name}: job {answer['id']} {state_phrase(answer['state'])}")
    else:
        _err(f"schedule {args.name} is {'paused' if answer.get('paused') else 'active'}")
    return EXIT_OK


def event_command(args: argparse.Namespace) -> int:
    """Post an event; one line per trigger listening for it."""
    data = _content(args.data, "--data")
    with _client(args) as client:
        items = client.post_event(args.name, data)
    if args.json:
        print(msgspec.json.encode(items).decode(), flush=True)
        return EXIT_OK
    refused = 0
    for item in items:
        status = item.get("status") or {}
        if item["outcome"] == "refused":
            refused += 1
            detail = (item.get("error") or {}).get("message")
        else:
            detail = status.get("id")
        print(f"{item['trigger']}\t{item['outcome']}\t{detail}", flush=True)
    return EXIT_OK if refused == 0 else EXIT_USAGE


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `batch`, `schedules`, `schedule` and `event` to the subcommands."""
    batch = commands.add_parser("batch", parents=[common], help="queue many jobs at once")
    batch.add_argument("kind", help="job kind, such as demo.keyed")
    batch.add_argument("--keys", help="comma-separated keys: one job per key, same --content")
    batch.add_argument("--content", help="JSON content of every key's job, or @FILE")
    batch.add_argument("--items", help="JSON list of items {content, key?, requestId?}, or @FILE")
    batch.add_argument("--on-conflict", choices=["reject", "existing", "replace"])
    batch.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    batch.set_defaults(func=batch_command)

    listing = commands.add_parser("schedules", parents=[common], help="list the schedules")
    listing.add_argument("--json", action="store_true", help="print the schedules as JSON")
    listing.set_defaults(func=schedules_command)

    one = commands.add_parser("schedule", parents=[common], help="pause, resume or run a schedule")
    one.add_argument("action", choices=["pause", "resume", "run"])
    one.add_argument("name")
    one.set_defaults(func=schedule_command)

    event = commands.add_parser("event", parents=[common], help="post an event to its triggers")
    event.add_argument("name", help="the event name, such as order.paid")
    event.add_argument("--data", default="{}", help="JSON payload, or @FILE (@- for stdin)")
    event.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    event.set_defaults(func=event_command)
