"""What one finished-job log line costs: `log_finished` called N times on an event loop,
through the handler of `configure_logging` writing to a file (line-buffered, as stderr is).

    python -m bench.log_line --lines 100000 --format text --per-turn 20

`--per-turn` lines are logged between two turns of the loop (`await asyncio.sleep(0)`),
as a worker finishing many jobs does. Prints microseconds of CPU (process time) per line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncproc.config import load_settings
from asyncproc.logs import configure_logging
from asyncproc.model import Job, JobState
from asyncproc.plugins.job_log import log_finished


def _jobs() -> tuple[Job, Job]:
    now = datetime.now(UTC)
    running = Job(
        id="4a7b2c9d0e1f4a7b2c9d0e1f",
        kind="bench.noop",
        state=JobState.RUNNING,
        created_at=now,
        deadline=now + timedelta(hours=1),
        retention=3600.0,
        attempt=1,
        started_at=now,
    )
    done = Job(
        id=running.id,
        kind=running.kind,
        state=JobState.SUCCEEDED,
        created_at=now,
        deadline=running.deadline,
        retention=3600.0,
        attempt=1,
        started_at=now,
        finished_at=now + timedelta(milliseconds=502),
    )
    return running, done


async def _log_lines(lines: int, per_turn: int) -> float:
    before, after = _jobs()
    start = time.process_time()
    for i in range(lines):
        await log_finished(before, after)
        if i % per_turn == per_turn - 1:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    return time.process_time() - start


def main() -> None:
    """Run the measure and print the figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--per-turn", type=int, default=20)
    args = parser.parse_args()
    settings = load_settings(environ={}, log_format=args.format, log_level="info")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "lines.log"
        with path.open("w", buffering=1) as stream:
            handler = configure_logging(settings, stream)
            try:
                seconds = asyncio.run(_log_lines(args.lines, args.per_turn))
            finally:
                handler.flush()
                logging.getLogger().removeHandler(handler)
        written = len(path.read_text().splitlines())
    assert written == args.lines, (written, args.lines)
    print(
        f"{args.format}, {args.per_turn} lines per loop turn: "
        f"{seconds / args.lines * 1e6:.2f} µs per line ({args.lines} lines)"
    )


if __name__ == "__main__":
    main()
