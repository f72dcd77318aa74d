"""A memory-mode node under a steady load for minutes: does its memory stay flat?

    python bench/memory_rss.py                          # 1,000 jobs/s for 10 minutes
    python bench/memory_rss.py --rate 1000 --minutes 2 --max-finished 20000

`python app.py` (memory backends, the no-op bench kind) is offered `--rate` enqueues/s
over HTTP in 30-second rounds; after each round it prints the server's resident set size
(from /proc), the finished jobs it holds (capped by `max_finished`) and what a list call
`GET /api/jobs?state=succeeded&limit=50` took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inprocess import Backends
from bench.overhttp import _pace, asyncproc_server

ROUND = 30.0


def rss_mb(pid: int) -> float:
    """The resident set size of process `pid` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Run the rounds and print one line per round."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-finished", type=int, default=None)
    args = parser.parse_args()
    if args.max_finished is not None:
        os.environ["ASYNCPROC_MAX_FINISHED"] = str(args.max_finished)
    rounds = max(1, round(args.minutes * 60 / ROUND))
    with asyncproc_server(Backends()) as server, httpx.Client(base_url=server.base_url) as http:
        pid = server.process.pid
        print(f"start: RSS {rss_mb(pid):.0f} MB; {rounds} rounds of {ROUND:g} s at {args.rate:g}/s")
        sent = 0
        for number in range(1, rounds + 1):
            bad, offered = anyio.run(_pace, server.port, args.rate, ROUND, 16)
            sent += round(args.rate * ROUND)
            started = time.perf_counter()
            page = http.get("/api/jobs", params={"state": "succeeded", "limit": 50})
            took = (time.perf_counter() - started) * 1000
            assert page.status_code == 200, page.text
            print(
                f"round {number:2d}: {sent:>9,} sent ({offered:,.0f}/s offered, {bad} refused)"
                f"  RSS {rss_mb(pid):6.0f} MB  list call {took:5.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
