"""When a schedule's ticks fall (API.md section 12): pure functions of time.

A schedule ticks by a 5-field `cron` expression in an IANA time zone (through
`cronsim`, which keeps Debian cron's behaviour across DST changes: a skipped wall
time fires once at the next real minute, a repeated one fires once) or `every`
so many seconds, counted from the Unix epoch so that every node agrees on the
ticks whenever it started (`every = 3600` fires on the hour, UTC).

`plan` decides which ticks a scheduler fires now: every tick owed since the
schedule's `nextRunAt` while some scheduler was alive, and, for the ticks that
fell while none was (catch-up), none, the latest or all of those within the
catch-up window. Nothing here reads the clock.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

__all__ = [
    "GRACE",
    "Catchup",
    "Era",
    "Overlap",
    "Timing",
    "TimingError",
    "next_era",
    "plan",
    "tick_request_id",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
# A tick that fell at most this long after a scheduler was last seen alive is owed,
# not missed: that scheduler may have been busy, or shutting down, when it fell.
GRACE = 5.0
MIN_EVERY = 1.0


class Overlap(enum.StrEnum):
    """What a tick does while the schedule's previous job is queued or running."""

    SKIP = "skip"
    ALLOW = "allow"
    REPLACE = "replace"


class Catchup(enum.StrEnum):
    """Which ticks missed while no scheduler ran are fired when one runs again."""

    SKIP = "skip"
    ONE = "one"
    ALL = "all"


class TimingError(ValueError):
    """Raised when a schedule's timing is malformed; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Timing:
    """When a schedule ticks: `cron` (5 fields, minute first) in `timezone`, or
    `every` seconds (at least 1). Raises `TimingError` naming the bad field."""

    __slots__ = ("_step", "_zone", "cron", "every", "timezone")

    def __init__(self, *, cron: str | None, every: float | None, timezone: str = "UTC") -> None:
        if (cron is None) == (every is None):
            raise TimingError("cron", "set exactly one of cron and every")
        self.cron = cron
        self.every = every
        self.timezone = timezone
        self._zone = _zone(timezone)
        self._step = 0
        if cron is not None:
            _check_cron(cron, self._zone)
        if every is not None:
            if not every >= MIN_EVERY:  # `not >=` also refuses NaN
                raise TimingError("every", f"must be at least {MIN_EVERY:g} s, not {every!r}")
            self._step = round(every * 1_000_000)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timing):
            return NotImplemented
        return (self.cron, self.every, self.timezone) == (other.cron, other.every, other.timezone)

    def __hash__(self) -> int:
        return hash((self.cron, self.every, self.timezone))

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment` (an aware time), in UTC."""
        if self.cron is None:
            elapsed = (moment - EPOCH) // MICROSECOND
            ticks = elapsed // self._step + 1
            return EPOCH + ticks * self._step * MICROSECOND
        for local in CronSim(self.cron, moment.astimezone(self._zone)):
            tick = local.astimezone(UTC)
            # Right after a repeated wall-clock hour the next match may map back
            # before `moment`: it already fired once, in the first pass.
            if tick > moment:
                return tick
        raise AssertionError("unreachable: the expression was checked to match")

    def ticks(self, since: datetime, until: datetime) -> Iterator[datetime]:
        """The ticks `t` with `since <= t <= until`, oldest first."""
        tick = self.next_after(since - MICROSECOND)
        while tick <= until:
            yield tick
            tick = self.next_after(tick)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimingError("timezone", f"{name!r} is not an IANA time zone name") from None


def _check_cron(expression: str, zone: ZoneInfo) -> None:
    fields = expression.split()
    if len(fields) != 5:
        raise TimingError(
            "cron", f"{expression!r} has {len(fields)} fields; expected 5 (minute first)"
        )
    try:
        next(CronSim(expression, datetime.now(UTC).astimezone(zone)))
    except CronSimError as exc:
        raise TimingError("cron", f"{expression!r} is not a cron expression: {exc}") from None
    except StopIteration:
        raise TimingError("cron", f"{expression!r} never matches") from None


def tick_request_id(schedule: str, tick: datetime) -> str:
    """The `requestId` of a tick's job: the same on every node, so one job per tick."""
    tick = tick.astimezone(UTC)
    stamp = tick.strftime("%Y%m%dT%H%M%S")
    if tick.microsecond:
        stamp += f".{tick.microsecond:06d}".rstrip("0")
    return f"schedule:{schedule}:{stamp}Z"


class Era(msgspec.Struct, frozen=True):
    """A stretch of time while some scheduler ran without a pause over `GRACE`:
    since when, the latest stamp, and the latest stamp of the era before (None: none)."""

    since: datetime
    at: datetime
    gap_from: datetime | None = None

    def missed(self) -> tuple[datetime, datetime]:
        """The [start, end) of the time no scheduler ran before this era: ticks there
        were missed. A tick up to `GRACE` after the era before was still owed by it."""
        if self.gap_from is None:
            return EPOCH, self.since
        return self.gap_from + timedelta(seconds=GRACE), self.since


def next_era(era: Era | None, now: datetime) -> Era:
    """The era after a scheduler's stamp at `now`: the same one while the last stamp
    is at most `GRACE` old, else a new one starting now."""
    if era is not None and (now - era.at).total_seconds() <= GRACE:
        return Era(era.since, max(era.at, now), era.gap_from)
    return Era(now, now, None if era is None else era.at)


def plan(
    timing: Timing,
    *,
    next_run: datetime,
    now: datetime,
    missed: tuple[datetime, datetime],
    catchup: Catchup,
    window: float,
    limit: int = 100,
) -> tuple[list[datetime], datetime]:
    """The ticks to fire now, oldest first, and the schedule's next `nextRunAt`.

    `next_run` is the first tick not handled yet; `missed` the [start, end) of the
    time no scheduler ran (`Era.missed`). Ticks outside it are owed and all fired;
    `catchup` picks among those inside it no older than `window` seconds. No tick
    older than `window` (or `GRACE`, if longer) is ever fired. At most `limit` ticks
    are returned; the rest come with the next plan.
    """
    if next_run > now:
        return [], next_run
    oldest = max(next_run, now - timedelta(seconds=max(window, GRACE)))
    gap_start, gap_end = missed
    before = list(itertools.islice(timing.ticks(oldest, min(now, gap_start - MICROSECOND)), limit))
    caught: list[datetime] = []
    since = max(oldest, gap_start, now - timedelta(seconds=window))
    until = min(now, gap_end - MICROSECOND)
    if catchup is Catchup.ALL:
        caught = list(itertools.islice(timing.ticks(since, until), limit))
    elif catchup is Catchup.ONE:
        latest = _latest(timing, since, until)
        caught = [] if latest is None else [latest]
    after = list(itertools.islice(timing.ticks(max(oldest, gap_end), now), limit))
    fire = (before + caught + after)[:limit]
    if len(fire) == limit:
        return fire, timing.next_after(fire[-1])
    return fire, timing.next_after(now)


def _latest(timing: Timing, since: datetime, until: datetime) -> datetime | None:
    """The latest tick in [since, until], or None."""
    if since > until:
        return None
    if timing.cron is None:
        tick = timing.next_after(until) - timing._step * MICROSECOND
        return tick if tick >= since else None
    latest = None
    for tick in timing.ticks(since, until):
        latest = tick
    return latest
