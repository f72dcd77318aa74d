"""What a benchmark run measured, and how it is printed."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Figures", "Timing", "machine_line", "percentile", "summarise", "timing_of"]


@dataclass(frozen=True)
class Timing:
    """When a job was created and when it finished (None: not finished)."""

    created_at: datetime
    finished_at: datetime | None
    state: str


@dataclass
class Figures:
    """One measured run of one mode."""

    label: str
    jobs: int = 0
    finished: int = 0
    seconds: float = 0.0
    rate: float = 0.0  # jobs/s end to end, or req/s for the ceiling
    p50_ms: float | None = None
    p99_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One human-readable line."""
        parts = [f"{self.label:<26}", f"{self.rate:>9,.0f}/s"]
        if self.jobs:
            parts.append(f"jobs {self.finished:,}/{self.jobs:,} finished")
        if self.p50_ms is not None and self.p99_ms is not None:
            parts.append(f"p50 {self.p50_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms")
        parts.extend(self.notes)
        return "  ".join(parts)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of sorted values, nearest rank."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def timing_of(label: str, timings: Iterable[Timing], *, offered: int | None = None) -> Figures:
    """Jobs/s over first created -> last finished, and createdAt -> finishedAt percentiles."""
    timings = list(timings)
    done = [t for t in timings if t.finished_at is not None]
    figures = Figures(label, jobs=offered if offered is not None else len(timings))
    figures.finished = sum(1 for t in done if t.state == "succeeded")
    if not done:
        return figures
    start = min(t.created_at for t in timings)
    end = max(t.finished_at for t in done if t.finished_at is not None)
    figures.seconds = (end - start).total_seconds()
    figures.rate = len(done) / figures.seconds if figures.seconds > 0 else math.inf
    latencies = sorted(
        (t.finished_at - t.created_at).total_seconds() * 1000
        for t in done
        if t.finished_at is not None
    )
    figures.p50_ms = percentile(latencies, 50)
    figures.p99_ms = percentile(latencies, 99)
    failed = len(timings) - figures.finished
    if failed:
        figures.notes.append(f"NOT SUCCEEDED: {failed}")
    return figures


def summarise(runs: Sequence[Figures]) -> str:
    """Best and median rate of repeated runs of one mode."""
    rates = [run.rate for run in runs]
    p99s = [run.p99_ms for run in runs if run.p99_ms is not None]
    text = (
        f"{runs[0].label:<26}  best {max(rates):,.0f}/s  median {statistics.median(rates):,.0f}/s"
    )
    if p99s:
        text += f"  p99 best {min(p99s):.1f} ms  median {statistics.median(p99s):.1f} ms"
    return text + f"  ({len(runs)} runs)"


def machine_line() -> str:
    """Date, machine and load: the context every figure needs."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}  {platform.machine()} x{os.cpu_count()}  "
        f"Python {sys.version.split()[0]}  load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
