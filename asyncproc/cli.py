"""The `asyncproc` command: `serve` runs a node (more commands in `client`-based ones)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import Settings, load_settings
from .errors import AsyncProcError, ConfigError

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    return load_settings(args.config, **overrides)


def serve(args: argparse.Namespace) -> int:
    """Run one node with uvicorn until interrupted."""
    import uvicorn

    from .server import create_app

    settings = _settings(args)
    app = create_app(settings)
    print(f"asyncproc {settings.role} node on http://{settings.host}:{settings.port}/", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 1,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="asyncproc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run a node (API and/or worker, per `role`)")
    run.add_argument("--config", help="TOML settings file (or ASYNCPROC_CONFIG)")
    run.add_argument("--host", help="override the `host` setting")
    run.add_argument("--port", type=int, help="override the `port` setting")
    run.add_argument("--log-level", default="warning", help="uvicorn log level")
    run.add_argument("--access-log", action="store_true", help="log every request")
    run.set_defaults(func=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"asyncproc: bad setting {exc}", file=sys.stderr)
        return 2
    except AsyncProcError as exc:
        print(f"asyncproc: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
