"""Throughput and latency of asyncproc with no-op jobs.

    python bench/throughput.py                      # (a), (c), (b): burst of --jobs
    python bench/throughput.py --rate 1000 --duration 10   # paced: latency at an offered rate
    python bench/throughput.py --mode http --state redis --queue rabbitmq

(a) in process through `JobService.enqueue` and a `WorkerPool`; (b) over HTTP
against `python app.py` driven by wrk; (c) the same wrk run against a bare
Starlette JSON endpoint served the same way, as the ceiling of (b). Jobs/s is
jobs / (first createdAt -> last finishedAt); latency is createdAt -> finishedAt
of every job, read from the records. See bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `bench` and `asyncproc` importable from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from bench.figures import Figures, machine_line, summarise
from bench.inprocess import Backends, run_burst, run_paced
from bench.overhttp import Load, run_ceiling, run_http_burst, run_http_paced

TARGET_INPROCESS = 15_000.0
TARGET_RATIO = 0.60
TARGET_P99_MS = 50.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mode", choices=["inprocess", "http", "ceiling", "all"], default="all")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per burst run")
    parser.add_argument("--rate", type=float, help="paced mode: offered jobs/s")
    parser.add_argument("--duration", type=float, default=10.0, help="paced mode: seconds")
    parser.add_argument("--state", choices=["memory", "redis"], default="memory")
    parser.add_argument("--queue", choices=["memory", "rabbitmq"], default="memory")
    parser.add_argument("--concurrency", type=int, default=16, help="the worker's setting")
    parser.add_argument(
        "--split",
        action="store_true",
        help="over HTTP: an api node and a worker node as two processes (cluster backends)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--max-seconds", type=int, default=60, help="bound on one wrk run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the in-process mode (uvicorn picks uvloop when installed)",
    )
    return parser


def _in_loop(args: argparse.Namespace, job: Callable[[], Awaitable[Figures]]) -> Figures:
    return anyio.run(job, backend="asyncio", backend_options={"use_uvloop": args.loop == "uvloop"})


def _runs(args: argparse.Namespace) -> list[tuple[str, Callable[[], Figures]]]:
    if args.split and args.state == "memory":
        raise SystemExit("--split needs --state redis --queue rabbitmq")
    backends = Backends(args.state, args.queue, args.concurrency, args.split)
    load = Load(args.threads, args.connections, args.max_seconds)
    want = {"inprocess", "http", "ceiling"} if args.mode == "all" else {args.mode}
    runs: list[tuple[str, Callable[[], Figures]]] = []
    if args.rate is not None:
        if "inprocess" in want:
            runs.append(
                ("a", lambda: _in_loop(args, lambda: run_paced(backends, args.rate, args.duration)))
            )
        if "http" in want:
            runs.append(("b", lambda: run_http_paced(backends, args.rate, args.duration)))
        return runs
    if "inprocess" in want:
        runs.append(("a", lambda: _in_loop(args, lambda: run_burst(backends, args.jobs))))
    if "ceiling" in want:
        runs.append(("c", lambda: run_ceiling(args.jobs, load)))
        runs.append(("c0", lambda: run_ceiling(args.jobs, load, corked=False)))
    if "http" in want:
        runs.append(("b", lambda: run_http_burst(backends, args.jobs, load)))
    return runs


def _verdicts(args: argparse.Namespace, results: dict[str, list[Figures]]) -> list[str]:
    """The targets of issue 2, which are set for the memory backends."""
    if (args.state, args.queue) != ("memory", "memory"):
        return []
    lines = []
    median = {mode: statistics.median(f.rate for f in runs) for mode, runs in results.items()}
    best = {mode: max(f.rate for f in runs) for mode, runs in results.items()}
    if args.rate is not None:
        for mode, runs in results.items():
            p99 = statistics.median(f.p99_ms or 0.0 for f in runs)
            ok = p99 < TARGET_P99_MS and all(f.finished == f.jobs for f in runs)
            lines.append(
                f"target ({mode}) p99 < {TARGET_P99_MS:g} ms at {args.rate:,.0f}/s offered: "
                f"median p99 {p99:.1f} ms -> {'met' if ok else 'NOT met'}"
            )
        return lines
    if "a" in results:
        ok = median["a"] >= TARGET_INPROCESS
        lines.append(
            f"target (a) >= {TARGET_INPROCESS:,.0f} jobs/s: best {best['a']:,.0f}, "
            f"median {median['a']:,.0f} -> {'met' if ok else 'NOT met'}"
        )
    if "b" in results and "c" in results:
        ratio_best = best["b"] / best["c"]
        ratio_median = median["b"] / median["c"]
        finished = all(f.finished == f.jobs for f in results["b"])
        ok = ratio_median >= TARGET_RATIO and finished
        lines.append(
            f"target (b) >= {TARGET_RATIO:.0%} of (c), every job finished: "
            f"best {ratio_best:.0%}, median {ratio_median:.0%}, "
            f"{'all' if finished else 'NOT all'} finished -> {'met' if ok else 'NOT met'}"
        )
        if "c0" in results:
            lines.append(
                f"(b) against (c0), the bare endpoint on uvicorn's own protocol: "
                f"best {best['b'] / best['c0']:.0%}, median {median['b'] / median['c0']:.0%}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the chosen modes `--repeat` times; print every run, then best/median and targets."""
    args = _parser().parse_args(argv)
    runs = _runs(args)
    if not runs:
        print("nothing to run: the ceiling has no paced mode", file=sys.stderr)
        return 2
    print(machine_line(), flush=True)
    load = (
        f"paced {args.rate:,.0f} jobs/s for {args.duration:g}s"
        if args.rate is not None
        else f"burst of {args.jobs:,} jobs, wrk -t{args.threads} -c{args.connections}"
    )
    print(
        f"{load}, concurrency={args.concurrency}, state={args.state}, queue={args.queue}",
        flush=True,
    )
    results: dict[str, list[Figures]] = {}
    for _ in range(args.repeat):
        for mode, run in runs:
            figures = run()
            results.setdefault(mode, []).append(figures)
            print(figures.line(), flush=True)
    if args.repeat > 1:
        print("-- best / median")
        for runs_of_mode in results.values():
            print(summarise(runs_of_mode))
    for line in _verdicts(args, results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
