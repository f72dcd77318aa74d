"""Redis StateStore: records in hashes, compare-and-set writes, changes over pub/sub.

The lifecycle rules stay in Python (`lifecycle.apply`): a transition reads the
record, applies the event, and writes the new record with a Lua script that
refuses when anyone wrote since the read (a per-write token). The same script
keeps the indexes, the key holder and the expiry, and publishes the `Change`,
so a write and its notification are one atomic step.

The keys and the scripts are in `redis_scripts`; the batched writes in
`redis_pipeline`; the change listener in `redis_listener`; what an insert does
about a held key (the rules applied to what the script read) in `redis_keys`.

Records expire with Redis TTLs (API.md section 4); `purge_expired` only trims
the indexes of records Redis has dropped. The scripts touch several keys at once,
so the store needs one Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from asyncproc.changes import Change, ChangeHub
from asyncproc.errors import (
    BackendUnavailable,
    JobNotFound,
    KeyConflict,
    TransitionRefused,
)
from asyncproc.interfaces import Created, Doc, JobQuery, Page, StateStore, cursor_of
from asyncproc.lifecycle import Event, Revive, Succeed, apply, lease_after
from asyncproc.limits import MIN_WAIT, RATE_SLACK, STALE, WAKE_EARLY, Limits
from asyncproc.model import (
    TERMINAL_STATES,
    Job,
    JobState,
    OnConflict,
    Uniqueness,
    decode_job,
    encode_job,
    utcnow,
)
from asyncproc.rules import expired, holds_key, key_after, must_tell

from .redis_keys import Free, decide, hold_of
from .redis_listener import ChangeListener
from .redis_pipeline import UNAVAILABLE, Arg, Pipeliner
from .redis_scripts import (
    ACQUIRE,
    CREATE,
    FORGET,
    HOLDER,
    PUT_DOC,
    RELEASE,
    RELEASE_START,
    TRANSITION,
    epoch_ms,
    index_member,
)

if TYPE_CHECKING:
    from asyncproc.config import Settings

__all__ = ["RedisStateStore"]

# An unfinished record outlives its deadline by at least this much, so the sweeper
# can always still mark it timed out (even with a tiny retention).
_UNFINISHED_MARGIN = 3600.0
# Records we wrote or read last, as the guess for the next compare-and-set (one
# round trip instead of two); the write token makes a wrong guess harmless.
_CACHE_SIZE = 1024
_CACHE_MAX_CONTENT = 64 * 1024
_LIST_BATCH = 100
# A node's watch of a job (long poll, event stream) lasts this long, renewed this often
# while it waits (a long poll waits at most 60 s; a stream re-listens at least every 15 s).
_WATCH_FOR = 120.0
_WATCH_AGAIN = 30.0
# A list by state reads the state's own sets when they hold at most this many jobs.
_FEW_IN_STATE = 1000
# The per-minute counters outlive the hour `GET /api/stats` shows.
_MINUTES_TTL = 7200


# ARGV 11..19 of CREATE when the key's holder is not written.
_NO_HOLDER_WRITE: tuple[Arg, ...] = ("", "", "", "", "0", "0", "0", "", "")


class _Plan(NamedTuple):
    """One attempt of `insert`: the record to create, ARGV 10..19 of CREATE (the
    hold value it must find, the holder's write), the holder's job key ("" when it
    is not written), the holder before and after, and the holder's (record, token)."""

    job: Job
    args: list[Arg]
    holder_key: str = ""
    replaced: tuple[Job, Job] | None = None
    written: tuple[Job, bytes] | None = None

    @classmethod
    def plain(cls, job: Job, expected: str, replaced: tuple[Job, Job] | None = None) -> _Plan:
        """Create `job` if the hold value is `expected` ("?": the key is free), writing
        no other record."""
        return cls(job, [expected, *_NO_HOLDER_WRITE], "", replaced)


def _doc(raw: bytes) -> Doc:
    """A document from its stored value "<version>|<data>"."""
    version, _, data = raw.partition(b"|")
    return Doc(data, int(version))


def _exp_entry(job: Job) -> bytes:
    """The `exp` member of a finished record: [id, index member, kind, key, parent, owner]."""
    return msgspec.json.encode(
        [
            job.id,
            index_member(job.created_at, job.id),
            job.kind,
            job.key,
            job.parent_id,
            job.owner,
        ]
    )


def _keep_until(job: Job) -> datetime:
    """When the record of `job` expires (its TTL in Redis)."""
    if job.finished_at is not None:
        return job.expires_at
    return job.deadline + timedelta(seconds=max(job.retention, _UNFINISHED_MARGIN))


@contextmanager
def _guard() -> Iterator[None]:
    """Turn every way of not reaching Redis into `BackendUnavailable`."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise BackendUnavailable("redis", str(exc) or type(exc).__name__) from exc


class RedisStateStore(StateStore):
    """The cluster StateStore: every node sees the same records and changes."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "asyncproc:",
        hub: ChangeHub | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.hub = hub or ChangeHub()
        self.url = url
        self.prefix = prefix
        self._channel = f"{prefix}changes"
        # Changes not every node must hear go out only while some node watches the job.
        self._channel_if_watched = f"?{prefix}changes"
        # Job id -> when this node last told Redis it watches it (monotonic seconds).
        self._watching: dict[str, float] = {}
        self._node = os.urandom(6).hex()
        # Named connections: CLIENT LIST shows which node holds which.
        self.client_name = f"asyncproc-{self._node}"
        # A few quick retries reconnect a broken pooled connection; more would only
        # delay the 503 while Redis is really down.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 2.0),
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
            client_name=self.client_name,
        )
        # The listener's own client: no hidden retries, so every reconnect is seen
        # (and followed by a resync of what this node watches).
        self._sub_redis = aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=min(timeout, 2.0),
            retry=Retry(NoBackoff(), 0),
            health_check_interval=15,
            client_name=self.client_name,
        )
        self._create = self._redis.register_script(CREATE)
        self._transition = self._redis.register_script(TRANSITION)
        # The pipeliner's own client, without a socket timeout: each batch has one
        # of its own, and redis-py's per-write timeout spawns a task per write.
        self._pipe_redis = aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=min(timeout, 2.0),
            client_name=self.client_name,
        )
        self._pipeliner = Pipeliner(self._pipe_redis, timeout)
        self._release = self._redis.register_script(RELEASE)
        self._forget = self._redis.register_script(FORGET)
        self._holder = self._redis.register_script(HOLDER)
        self._put_doc = self._redis.register_script(PUT_DOC)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release_start = self._redis.register_script(RELEASE_START)
        self._cache: OrderedDict[str, tuple[Job, bytes]] = OrderedDict()
        # The record last inserted and its encoding, for `hint` not to encode it again.
        self._inserted: tuple[Job, bytes] | None = None
        self._writes = itertools.count()
        self._listener = ChangeListener(self._sub_redis, self._channel, self.hub, self._resync)
        self.hub.on_watch = self._watch

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStateStore:
        """The store of `settings.redis_url` with `settings.key_prefix`."""
        return cls(settings.redis_url, prefix=settings.key_prefix)

    # -- keys -------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _hold_key(self, kind: str, key: str) -> str:
        return f"{self.prefix}hold:{kind}:{key}"

    def _doc_key(self, space: str) -> str:
        return f"{self.prefix}doc:{space}"

    def _index_key(self, query: JobQuery) -> str:
        # The most selective index the query names; `query.matches` does the rest.
        if query.parent is not None:
            return f"{self.prefix}idx:parent:{query.parent}"
        if query.key is not None:
            return f"{self.prefix}idx:key:{query.key}"
        if query.owner is not None:
            return f"{self.prefix}idx:owner:{query.owner}"
        if query.kind is not None:
            return f"{self.prefix}idx:kind:{query.kind}"
        return f"{self.prefix}idx"

    def _state_set(self, kind: str, state: JobState) -> str:
        return f"{self.prefix}st:{kind}:{state}"

    def _state_move(self, before: Job, after: Job) -> tuple[Arg, Arg, Arg]:
        """The state sets a write moves the record between, and its score in the
        second (when the record expires); blanks when its state does not change."""
        if before.state is after.state:
            return "", "", ""
        return (
            self._state_set(before.kind, before.state),
            self._state_set(after.kind, after.state),
            epoch_ms(_keep_until(after)),
        )

    def _token(self) -> bytes:
        return f"{self._node}.{next(self._writes)}".encode()

    def _remember(self, job: Job, token: bytes) -> None:
        if job.state.terminal or len(job.content) > _CACHE_MAX_CONTENT:
            self._cache.pop(job.id, None)
            return
        self._cache[job.id] = (job, token)
        self._cache.move_to_end(job.id)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def hint(self, job: Job) -> bytes:
        """See `StateStore.hint`: the write token and the record, when this node wrote
        `job` last (else b"")."""
        current = self._cache.get(job.id)
        if current is None or current[0] is not job:
            return b""
        inserted = self._inserted
        encoded = inserted[1] if inserted is not None and inserted[0] is job else encode_job(job)
        return b"%s\n%s" % (current[1], encoded)

    def take_hint(self, job_id: str, hint: bytes) -> None:
        """See `StateStore.take_hint`: a guess `change` checks like any cached record
        (a stale one costs the write's refusal, which answers the stored record)."""
        if job_id in self._cache:
            return
        token, _, record = hint.partition(b"\n")
        try:
            job = decode_job(record)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not a hint this store wrote: read the record instead
        if job.id == job_id and token:
            self._remember(job, token)

    def _change(self, job: Job) -> bytes:
        return msgspec.msgpack.encode(Change(job.id, job.version, job.state, job.stop_requested))

    # -- lifecycle of the store ---------------------------------------------------

    async def start(self) -> None:
        """Start the change listener; wait (briefly) for its first subscription.

        An unreachable server does not fail start-up: the listener keeps trying and
        `ping` reports the outage.
        """
        await self._listener.start()

    @property
    def listening(self) -> bool:
        """True while the change listener is subscribed."""
        return self._listener.listening

    async def aclose(self) -> None:
        """Stop the listener and close the connection pools; idempotent."""
        await self._listener.aclose()
        await self._pipeliner.aclose()
        await self._pipe_redis.aclose()
        await self._sub_redis.aclose()
        await self._redis.aclose()

    async def _resync(self) -> None:
        """Re-read what this node watches: changes published while away are lost."""
        for job_id in self.hub.watched_ids():
            job = await self.get(job_id)
            if job is not None:
                self.hub.publish(Change(job.id, job.version, job.state, job.stop_requested))

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Arg]) -> Any:
        """Run `script` with EVALSHA through the pipeliner; load it once if Redis lacks it."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        with _guard():
            try:
                return await self._pipeliner.call(*command)
            except NoScriptError:
                # Through the pipeliner too: after a Redis restart every caller of the
                # batch lands here at once, and a connection each would exhaust the pool.
                await self._pipeliner.call("SCRIPT", "LOAD", cast("str", script.script))
                return await self._pipeliner.call(*command)

    async def ping(self) -> None:
        """See `StateStore.ping`."""
        with _guard():
            await self._redis.ping()

    # -- records ------------------------------------------------------------------

    async def insert(
        self,
        job: Job,
        *,
        uniqueness: Uniqueness = Uniqueness.NONE,
        on_conflict: OnConflict = OnConflict.REJECT,
    ) -> Created:
        """See `StateStore.insert`.

        One script call when the key is free (or not ruled); when it is held the
        script answers the hold and its holder's record, `redis_keys.decide` applies
        the policy, and the next call writes both records only if neither changed
        meanwhile (else it answers the new values and Python decides again).
        """
        prefix = self.prefix
        ruled = job.key is not None and uniqueness is not Uniqueness.NONE
        keys = [
            self._job_key(job.id),
            f"{prefix}idx",
            f"{prefix}idx:kind:{job.kind}",
            f"{prefix}due",
            f"{prefix}exp",
            f"{prefix}idx:key:{job.key}" if job.key is not None else "",
            f"{prefix}idx:parent:{job.parent_id}" if job.parent_id is not None else "",
            self._hold_key(job.kind, cast("str", job.key)) if ruled else "",
            "",
            f"{prefix}idx:owner:{job.owner}" if job.owner is not None else "",
        ]
        token = self._token()
        keep_until = _keep_until(job)
        fixed: list[Arg] = [
            token,
            index_member(job.created_at, job.id),
            job.id,
            repr(job.deadline.timestamp()),
            epoch_ms(keep_until),
            f"{uniqueness}|{job.id}",
        ]
        plan = _Plan.plain(job, "?")
        while True:
            keys[8] = plan.holder_key
            record = plan.job
            holder_move: tuple[Arg, Arg, Arg] = ("", "", "")
            if plan.written is not None and plan.replaced is not None:
                holder_move = self._state_move(*plan.replaced)
            encoded = encode_job(record)
            args: list[Arg] = [
                encoded,
                *fixed,
                self._change(record),
                self._channel_if_watched,  # nobody waits on a job not yet there
                *plan.args,
                prefix,
                self._state_set(record.kind, record.state),
                *holder_move,
                record.kind,
            ]
            answer = await self._eval(self._create, keys, args)
            if answer[0] == 2:
                self._remember(record, token)
                self._inserted = (record, encoded)
                if plan.written is not None:
                    self._remember(*plan.written)
                return Created(record, True, plan.replaced)
            if answer[0] in (0, 1):  # the id exists (1: this very create, sent twice)
                stored = decode_job(answer[1])
                return Created(stored, answer[0] == 1, plan.replaced if answer[0] else None)
            decided = self._plan(job, on_conflict, answer[1:])
            if isinstance(decided, Created):
                return decided
            plan = decided

    def _plan(self, job: Job, on_conflict: OnConflict, seen: list[Any]) -> _Plan | Created:
        """The next attempt of `insert` after the script saw the key held (or not as
        expected): `seen` is [hold value, holder record, holder token], or []."""
        held, record, token = (
            (cast("bytes", seen[0]).decode(), seen[1], seen[2]) if seen else (None, None, None)
        )
        decision = decide(job, on_conflict, held, record, token, utcnow())
        if isinstance(decision, Created):
            return decision
        if isinstance(decision, Free):
            return _Plan.plain(decision.job, decision.expected)
        replaced = (decision.holder, decision.stopped)
        stopped = decision.stopped
        if stopped is decision.holder:  # already asked to stop: nothing to write
            return _Plan.plain(decision.job, decision.expected, replaced)
        written = self._token()
        args: list[Arg] = [
            decision.expected,
            decision.token,
            encode_job(stopped),
            written,
            self._change(stopped),
            *self._finishing(stopped),
            stopped.id,
        ]
        return _Plan(decision.job, args, self._job_key(stopped.id), replaced, (stopped, written))

    def _finishing(self, job: Job) -> tuple[Arg, Arg, Arg, bytes]:
        """What the scripts need to expire a record that finished: a flag ("1"), the
        expire time, the purge score and the `exp` entry; zeros when it did not."""
        if job.finished_at is None:
            return "0", "0", "0", b""
        purge_at = job.expires_at
        return "1", epoch_ms(purge_at), repr(purge_at.timestamp()), _exp_entry(job)

    async def key_holder(self, kind: str, key: str) -> Job | None:
        """See `StateStore.key_holder`."""
        answer = await self._eval(self._holder, [self._hold_key(kind, key)], [self.prefix])
        if not answer or answer[1] is None:
            return None
        rule, holder_id = hold_of(cast("bytes", answer[0]).decode())
        job = decode_job(answer[1])
        if (
            rule is None  # a wait left on a free key
            or (job.id, job.kind, job.key) != (holder_id, kind, key)
            or expired(job, utcnow())
            or not holds_key(rule, job.state)
        ):
            return None
        return job

    async def forget(self, job: Job) -> bool:
        """See `StateStore.forget`."""
        current = self._cache.get(job.id)
        if current is None or current[0].version != job.version:
            current = await self._read(job.id)
        if current is None or current[0].version != job.version:
            return False
        prefix = self.prefix
        keys = [
            self._job_key(job.id),
            f"{prefix}idx",
            f"{prefix}idx:kind:{job.kind}",
            f"{prefix}due",
            f"{prefix}idx:key:{job.key}" if job.key is not None else "",
            f"{prefix}idx:parent:{job.parent_id}" if job.parent_id is not None else "",
            self._hold_key(job.kind, job.key) if job.key is not None else "",
            f"{prefix}idx:owner:{job.owner}" if job.owner is not None else "",
        ]
        args: list[Arg] = [
            current[1],
            index_member(job.created_at, job.id),
            job.id,
            self._state_set(job.kind, current[0].state),
        ]
        forgotten = await self._eval(self._forget, keys, args)
        self._cache.pop(job.id, None)
        return bool(forgotten)

    async def _read(self, job_id: str) -> tuple[Job, bytes] | None:
        with _guard():
            record, token = cast(
                "list[bytes | None]",
                await self._pipeliner.call("HMGET", self._job_key(job_id), "r", "w"),
            )
        if record is None:
            return None
        job = decode_job(record)
        self._remember(job, token or b"")
        return job, token or b""

    async def get(self, job_id: str) -> Job | None:
        """See `StateStore.get`."""
        found = await self._read(job_id)
        if found is None or expired(found[0], utcnow()):
            return None
        return found[0]

    async def change(
        self,
        job_id: str,
        event: Event,
        *,
        result: bytes | None = None,
        now: datetime | None = None,
        by_runner: bool = False,
    ) -> tuple[Job, Job]:
        """See `StateStore.change`."""
        now = now or utcnow()
        current = self._cache.get(job_id)
        verified = current is None
        while True:
            if current is None:
                current = await self._read(job_id)
                verified = True
                if current is None or expired(current[0], now):
                    raise JobNotFound(f"no job {job_id}")
            job, token = current
            try:
                new = apply(job, event, now)
            except TransitionRefused:
                if verified:
                    raise
                current = None  # refused by a stale guess: ask Redis
                continue
            if new is job:
                if verified:
                    return job, job
                current = None
                continue
            written = self._token()
            revived = job.finished_at is not None and new.finished_at is None
            claim = None
            if revived and isinstance(event, Revive) and event.rule is not Uniqueness.NONE:
                new, claim = await self._revive_claim(new, event.rule, now)
            answer = await self._write(
                new,
                token,
                written,
                event,
                result,
                revived=revived,
                claim=claim,
                before=job,
                by_runner=by_runner,
            )
            if answer[0] in (2, 3):
                self._remember(new, written)
                return job, new
            if answer[0] == 5:
                continue  # the key's hold changed meanwhile: decide again
            if answer[0] == 0:
                self._cache.pop(job_id, None)
                raise JobNotFound(f"no job {job_id}")
            current = (decode_job(answer[1]), answer[2])
            verified = True
            if expired(current[0], now):
                raise JobNotFound(f"no job {job_id}")

    async def _revive_claim(
        self, new: Job, rule: Uniqueness, now: datetime
    ) -> tuple[Job, tuple[str, str] | None]:
        """What reviving keyed `new` does about its key: `KeyConflict` when another job
        holds it, else the hold value expected and the new one (and a wait the key
        carried passed on to the job)."""
        if new.key is None:
            return new, None
        answer = await self._eval(self._holder, [self._hold_key(new.kind, new.key)], [self.prefix])
        held = cast("bytes", answer[0]).decode() if answer else ""
        if held:
            held_rule, holder_id = hold_of(held)
            record = answer[1] if len(answer) > 1 else None
            holder = decode_job(record) if record is not None else None
            if held_rule is None:  # a free key that carries a wait
                if holder_id != new.id:
                    new = msgspec.structs.replace(new, after=holder_id)
            elif holder_id != new.id:
                ours = (holder_id, new.kind, new.key)
                if holder is not None and (
                    (holder.id, holder.kind, holder.key) != ours or expired(holder, now)
                ):
                    holder = None  # purged, or its id used again since
                if (holder is not None and holds_key(held_rule, holder.state)) or (
                    holder is None and held_rule is Uniqueness.ONCE
                ):
                    raise KeyConflict(
                        f"key {new.key!r} is held by job {holder_id}", jobId=holder_id
                    )
        return new, (held, f"{rule}|{new.id}")

    async def _write(
        self,
        new: Job,
        expected: bytes,
        token: bytes,
        event: Event,
        result: bytes | None,
        *,
        revived: bool = False,
        claim: tuple[str, str] | None = None,
        before: Job,
        by_runner: bool = False,
    ) -> list[Any]:
        """Compare-and-set `new` over the record written with `expected` (`before`);
        `revived`: a terminal record becomes unfinished again (`Revive`)."""
        keys = [self._job_key(new.id)]
        # Only a Succeed stores a result (as the memory store does).
        data = result if isinstance(event, Succeed) else None
        args: list[Arg] = [
            expected,
            token,
            encode_job(new),
            self._change(new),
            self._channel if must_tell(before, new, by_runner) else self._channel_if_watched,
            "0" if data is None else "1",
            b"" if data is None else data,
            new.id,
        ]
        if new.finished_at is not None:
            keys += [f"{self.prefix}due", f"{self.prefix}exp"]
            if new.key is not None:
                keys.append(self._hold_key(new.kind, new.key))
            _, expire_ms, score, entry = self._finishing(new)
            args += [
                expire_ms,
                score,
                entry,
                # What becomes of the key under either rule; the hold value names it.
                key_after(Uniqueness.ACTIVE, new),
                key_after(Uniqueness.ONCE, new),
                # For `wait`: the job the next holder must wait for.
                new.after or "",
            ]
        elif revived:
            # Unfinished again: the TTL of an unfinished record, back in `due`, out of `exp`.
            keys += [f"{self.prefix}due", f"{self.prefix}exp"]
            keep_until = _keep_until(new)
            args += [
                "unfinish",
                epoch_ms(keep_until),
                repr(new.deadline.timestamp()),
                _exp_entry(new),
            ]
            if claim is not None and new.key is not None:
                keys.append(self._hold_key(new.kind, new.key))
                args += [claim[0], claim[1]]
        lease = lease_after(before, new, event)
        args.append("-" if lease is False else "" if lease is True else repr(lease.timestamp()))
        args += self._state_move(before, new)
        answer: list[Any] = await self._eval(self._transition, keys, args)
        return answer

    def _watch(self, job_id: str) -> None:
        """Tell Redis that this node watches `job_id` (`ChangeHub.on_watch`), for
        `_WATCH_FOR` seconds, at most every `_WATCH_AGAIN` seconds per job. Sent with
        this turn's write, before the read that follows `listen`: a change after that
        read is told to this node (`rules.must_tell`, the scripts' `tell`)."""
        now = time.monotonic()
        last = self._watching.get(job_id)
        if last is not None and now - last < _WATCH_AGAIN:
            return
        if len(self._watching) > 10_000:
            self._watching = {k: t for k, t in self._watching.items() if now - t < _WATCH_AGAIN}
        self._watching[job_id] = now
        until = epoch_ms(utcnow()) + int(_WATCH_FOR * 1000)
        self._pipeliner.send("ZADD", f"{self.prefix}watched", "GT", until, job_id)

    async def hold_lease(self, job_ids: Sequence[str], until: datetime) -> None:
        """See `StateStore.hold_lease`: one sorted set, scored by lapse time."""
        if not job_ids:
            return
        score = repr(until.timestamp())
        pairs: list[Arg] = [part for job_id in job_ids for part in (score, job_id)]
        # Sent with this turn's write, the reply not waited for: a lease is advisory (a
        # job whose lease never landed is covered by its message's redelivery), and a
        # round trip before every handler would cost more than the lease itself.
        self._pipeliner.send("ZADD", f"{self.prefix}lease", *pairs)

    async def drop_lease(self, job_id: str) -> None:
        """See `StateStore.drop_lease` (sent, not waited for, as `hold_lease`)."""
        self._pipeliner.send("ZREM", f"{self.prefix}lease", job_id)

    async def lease_of(self, job_id: str) -> datetime | None:
        """See `StateStore.lease_of`."""
        with _guard():
            score = await self._pipeliner.call("ZSCORE", f"{self.prefix}lease", job_id)
        if score is None:
            return None
        return datetime.fromtimestamp(float(score), UTC)

    async def lapsed(self, now: datetime, limit: int = 100) -> list[str]:
        """See `StateStore.lapsed`."""
        with _guard():
            ids = cast(
                "list[bytes]",
                await self._redis.zrange(
                    f"{self.prefix}lease",
                    "-inf",
                    f"({now.timestamp()!r}",
                    byscore=True,
                    offset=0,
                    num=limit,
                ),
            )
        return [job_id.decode() for job_id in ids]

    def _limit_keys(self, kind: str, *parts: str) -> list[str]:
        return [f"{self.prefix}lim:{kind}:{part}" for part in parts]

    async def acquire_start(
        self,
        kind: str,
        job_id: str,
        holder: str,
        limits: Limits,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> float:
        """See `StateStore.acquire_start`: one ACQUIRE call (the rule in Lua)."""
        moment = (now or utcnow()).timestamp()
        count, window = limits.rate or ("", 0.0)
        # Idle keys go away: nothing in them matters after a window or a lease.
        ttl = math.ceil(max(window, lease_until.timestamp() - moment, STALE)) + 3600
        args: list[Arg] = [
            job_id,
            holder,
            "" if limits.max_concurrency is None else str(limits.max_concurrency),
            str(count),
            repr(window),
            repr(lease_until.timestamp()),
            repr(moment),
            repr(RATE_SLACK),
            repr(MIN_WAIT),
            repr(WAKE_EARLY),
            repr(STALE),
            str(ttl),
        ]
        keys = self._limit_keys(kind, "run", "starts", "wait", "due")
        return float(await self._eval(self._acquire, keys, args))

    async def release_start(self, kind: str, holder: str) -> str | None:
        """See `StateStore.release_start`."""
        keys = self._limit_keys(kind, "run", "wait", "due")
        woken = await self._eval(
            self._release_start,
            keys,
            [holder, repr(utcnow().timestamp()), repr(STALE), self.prefix],
        )
        return None if woken is None else cast("bytes", woken).decode()

    async def renew_starts(self, holders: Mapping[str, Sequence[str]], until: datetime) -> None:
        """See `StateStore.renew_starts`: ZADD XX, so a released permit stays released."""
        score = repr(until.timestamp())
        with _guard():
            for kind, names in holders.items():
                if names:
                    pairs: list[Arg] = [part for name in names for part in (score, name)]
                    [key] = self._limit_keys(kind, "run")
                    await self._pipeliner.call("ZADD", key, "XX", *pairs)

    async def get_result(self, job_id: str) -> bytes | None:
        """See `StateStore.get_result`."""
        with _guard():
            record, data = cast(
                "list[bytes | None]",
                await self._pipeliner.call("HMGET", self._job_key(job_id), "r", "x"),
            )
        if record is None or data is None or expired(decode_job(record), utcnow()):
            return None
        return data

    # -- queries --------------------------------------------------------------------

    async def list_jobs(self, query: JobQuery) -> Page:
        """See `StateStore.list_jobs`.

        A query by state first sizes the state's sets (one per kind): when they are
        small (a state few jobs are in, or none), the page is picked from them rather
        than by walking an index of every job.
        """
        if query.state is not None:
            few = await self._few_in_state(query)
            if few is not None:
                return await self._page_of(few, query)
        after = query.after()
        index = self._index_key(query)
        start = "(" + index_member(*after) if after is not None else "+"
        now = utcnow()
        items: list[Job] = []
        with _guard():
            while len(items) <= query.limit:
                members = cast(
                    "list[bytes]",
                    await self._redis.zrange(
                        index, start, "-", desc=True, bylex=True, offset=0, num=_LIST_BATCH
                    ),
                )
                if not members:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    for member in members:
                        job_id = member.split(b"|", 1)[1].decode()
                        pipe.hmget(self._job_key(job_id), ["r", "m"])
                    rows: list[list[bytes | None]] = await pipe.execute()
                stale = []
                for member, (record, stored_member) in zip(members, rows, strict=True):
                    if record is None or stored_member != member:
                        stale.append(member)
                        continue
                    job = decode_job(record)
                    if not expired(job, now) and query.matches(job):
                        items.append(job)
                        if len(items) > query.limit:
                            break
                if stale:
                    # Records Redis expired (or an id reused later): drop their entries.
                    await self._redis.zrem(index, *stale)
                if len(members) < _LIST_BATCH:
                    break
                start = "(" + members[-1].decode()
        more = len(items) > query.limit
        items = items[: query.limit]
        return Page(items=items, next=cursor_of(items[-1]) if more and items else None)

    async def _few_in_state(self, query: JobQuery) -> list[str] | None:
        """The ids of the jobs in `query.state` (of `query.kind`, when given) while there
        are at most `_FEW_IN_STATE`, else None."""
        assert query.state is not None
        with _guard():
            if query.kind is not None:
                kinds = [query.kind]
            else:
                members = await self._redis.smembers(f"{self.prefix}kinds")
                kinds = [k.decode() if isinstance(k, bytes) else k for k in members]
            if not kinds:
                return []
            now = f"({epoch_ms(utcnow())}"
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind in kinds:
                    pipe.zcount(self._state_set(kind, query.state), now, "+inf")
                sizes: list[int] = await pipe.execute()
            if sum(sizes) > _FEW_IN_STATE:
                return None
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, size in zip(kinds, sizes, strict=True):
                    if size:
                        pipe.zrange(self._state_set(kind, query.state), now, "+inf", byscore=True)
                found: list[list[bytes]] = await pipe.execute()
        return [job_id.decode() for ids in found for job_id in ids]

    async def _page_of(self, ids: list[str], query: JobQuery) -> Page:
        """The page of `query` among the jobs `ids` (read in one pipelined round trip)."""
        after = query.after()
        now = utcnow()
        jobs: list[Job] = []
        if ids:
            with _guard():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.hget(self._job_key(job_id), "r")
                    records: list[bytes | None] = await pipe.execute()
            for record in records:
                if record is None:
                    continue
                job = decode_job(record)
                if (
                    query.matches(job)
                    and not expired(job, now)
                    and (after is None or (job.created_at, job.id) < after)
                ):
                    jobs.append(job)
        items = heapq.nlargest(query.limit + 1, jobs, key=lambda j: (j.created_at, j.id))
        more = len(items) > query.limit
        items = items[: query.limit]
        return Page(items=items, next=cursor_of(items[-1]) if more else None)

    async def release_key(self, kind: str, key: str) -> bool:
        """See `StateStore.release_key`."""
        with _guard():
            released = await self._release(keys=[self._hold_key(kind, key)])
        return bool(released)

    async def overdue(self, now: datetime, limit: int = 100) -> list[str]:
        """See `StateStore.overdue`."""
        due = f"{self.prefix}due"
        with _guard():
            ids = cast(
                "list[bytes]",
                await self._redis.zrange(
                    due, "-inf", f"({now.timestamp()!r}", byscore=True, offset=0, num=limit
                ),
            )
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.exists(self._job_key(job_id.decode()))
                alive: list[int] = await pipe.execute()
            gone = [job_id for job_id, live in zip(ids, alive, strict=True) if not live]
            if gone:
                await self._redis.zrem(due, *gone)
        return [job_id.decode() for job_id, live in zip(ids, alive, strict=True) if live]

    async def unfinished(self, limit: int = 200) -> list[str]:
        """See `StateStore.unfinished`."""
        with _guard():
            ids = cast("list[bytes]", await self._redis.zrange(f"{self.prefix}due", 0, limit - 1))
        return [job_id.decode() for job_id in ids]

    async def purge_expired(self, now: datetime) -> int:
        """See `StateStore.purge_expired`: Redis drops the records; this trims the indexes."""
        exp = f"{self.prefix}exp"
        # Watches that lapsed (their node stopped waiting, or went away).
        self._pipeliner.send("ZREMRANGEBYSCORE", f"{self.prefix}watched", "-inf", epoch_ms(now))
        with _guard():
            entries = cast(
                "list[bytes]",
                await self._redis.zrange(
                    exp, "-inf", repr(now.timestamp()), byscore=True, offset=0, num=500
                ),
            )
            if not entries:
                return 0
            # [id, member, kind, key, parent, owner]; older entries lack the last fields.
            decoded = [msgspec.json.decode(entry, type=list[str | None]) for entry in entries]
            async with self._redis.pipeline(transaction=False) as pipe:
                for fields in decoded:
                    pipe.hget(self._job_key(cast("str", fields[0])), "m")
                members: list[bytes | None] = await pipe.execute()
            purged = 0
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry, fields, stored in zip(entries, decoded, members, strict=True):
                    member, kind, key = fields[1:4]
                    parent = fields[4] if len(fields) > 4 else None
                    owner = fields[5] if len(fields) > 5 else None
                    if member is None or (stored is not None and stored.decode() == member):
                        continue  # Redis has not dropped it yet
                    purged += 1
                    pipe.zrem(f"{self.prefix}idx", member)
                    pipe.zrem(f"{self.prefix}idx:kind:{kind}", member)
                    for state in TERMINAL_STATES:  # its state set (it ended in one)
                        pipe.zrem(self._state_set(cast("str", kind), state), cast("str", fields[0]))
                    if key is not None:
                        pipe.zrem(f"{self.prefix}idx:key:{key}", member)
                    if parent is not None:
                        pipe.zrem(f"{self.prefix}idx:parent:{parent}", member)
                    if owner is not None:
                        pipe.zrem(f"{self.prefix}idx:owner:{owner}", member)
                    pipe.zrem(exp, entry)
                if purged:
                    await pipe.execute()
        return purged

    # -- counts ------------------------------------------------------------------------

    async def count_states(self, kinds: Iterable[str]) -> dict[str, dict[JobState, int]]:
        """See `StateStore.count_states`: the size of each state set, once the records
        Redis expired are trimmed off it (their score is when they expire)."""
        slots = [(kind, state) for kind in kinds for state in JobState]
        if not slots:
            return {}
        now = f"({epoch_ms(utcnow())}"
        with _guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, state in slots:
                    key = self._state_set(kind, state)
                    pipe.zremrangebyscore(key, "-inf", now)
                    pipe.zcard(key)
                answers: list[int] = await pipe.execute()
        counts: dict[str, dict[JobState, int]] = {}
        for (kind, state), n in zip(slots, answers[1::2], strict=True):
            counts.setdefault(kind, {})[state] = int(n)
        return counts

    def _minute_key(self, minute: datetime) -> str:
        return f"{self.prefix}min:{int(minute.timestamp()) // 60}"

    async def add_minute_counts(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """See `StateStore.add_minute_counts`: HINCRBY on the minute's hash, 2 h TTL."""
        if not counts:
            return
        with _guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                for (minute, name), n in counts.items():
                    key = self._minute_key(minute)
                    pipe.hincrby(key, name, n)
                    pipe.expire(key, _MINUTES_TTL)
                await pipe.execute()

    async def minute_counts(self, first: datetime, minutes: int) -> list[dict[str, int]]:
        """See `StateStore.minute_counts`: one pipelined HGETALL per minute."""
        step = timedelta(minutes=1)
        with _guard():
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in range(minutes):
                    pipe.hgetall(self._minute_key(first + i * step))
                rows: list[dict[bytes, bytes]] = await pipe.execute()
        return [{name.decode(): int(n) for name, n in row.items()} for row in rows]

    # -- documents --------------------------------------------------------------------

    async def get_doc(self, space: str, name: str) -> Doc | None:
        """See `StateStore.get_doc`."""
        with _guard():
            raw = await self._pipeliner.call("HGET", self._doc_key(space), name)
        return None if raw is None else _doc(raw)

    async def put_doc(
        self, space: str, name: str, data: bytes, *, expected: int | None = None
    ) -> int | None:
        """See `StateStore.put_doc`."""
        version = await self._eval(
            self._put_doc,
            [self._doc_key(space)],
            [name, bytes(data), "" if expected is None else str(expected)],
        )
        return None if version < 0 else int(version)

    async def list_docs(self, space: str) -> dict[str, Doc]:
        """See `StateStore.list_docs`."""
        with _guard():
            raw = await self._pipeliner.call("HGETALL", self._doc_key(space))
        # A map under RESP3, a flat list of field, value under RESP2.
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        return {name.decode(): _doc(value) for name, value in sorted(pairs)}

    async def delete_doc(self, space: str, name: str) -> bool:
        """See `StateStore.delete_doc`."""
        with _guard():
            return bool(await self._pipeliner.call("HDEL", self._doc_key(space), name))
