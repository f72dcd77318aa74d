"""The Lua scripts of the Redis StateStore, and the key layout they keep.

Keys, all under the prefix P:

    P job:<id>             hash    r: record (msgspec JSON), w: write token,
                                   m: index member, x: result bytes
    P idx                  zset    every job; members "<createdAt µs, 20 digits>|<id>",
                                   all scores 0, so lexical order is (createdAt, id)
    P idx:kind:<kind>      zset    the same members, one kind
    P idx:key:<key>        zset    the same members, one business key
    P idx:parent:<id>      zset    the same members, the jobs one job started
    P idx:owner:<name>     zset    the same members, the jobs one token enqueued
    P due                  zset    ids of unfinished jobs, scored by deadline
    P exp                  zset    [id, member, kind, key, parent, owner] of finished jobs,
                                   scored by purge time
    P hold:<kind>:<key>    string  "<rule>|<id>" while a job holds the key (rule
                                   `active` or `once`), "done|<id>" for a succeeded
                                   `once` job until the key is released, "wait|<id>"
                                   for a free key whose next holder waits for <id>
    P lease                zset    ids of running jobs, scored by when their lease
                                   lapses (kept beside the record: renewals write
                                   no record and wake no watcher)
    P lim:<kind>:run       zset    start permits of a limited kind: holder ->
                                   when it lapses (renewed with the leases)
    P lim:<kind>:starts    zset    its rate window: holder -> grant time
    P lim:<kind>:wait      zset    its waiters: job id -> when it first waited
    P lim:<kind>:due       zset    job id -> when its fallback message is due
    P doc:<space>          hash    document name -> "<version>|<data>"
    P kinds                set     every kind a job was ever created of (the state
                                   sets to look at for a list filtered by state)
    P st:<kind>:<state>    zset    ids of the kind's records in that state, scored by
                                   when the record expires (epoch ms): the counts of
                                   `count_states`, kept by the scripts that write
    P min:<epoch minute>   hash    name -> count: the per-minute counters, 2 h TTL
    P changes              pub/sub channel of msgpack-encoded `Change`s: those every node
                                   must hear, and those of watched jobs (`must_tell`)
    P watched              zset    ids of jobs some node waits on (long poll, events),
                                   scored by when the watch lapses (epoch ms)

The scripts decide nothing about the lifecycle or the key rules: Python computes
every new record and every decision (`lifecycle.apply`, `rules.key_after`,
`rules.replace_event`) from what it read, and a script writes it only when what
Python read is still what is stored (the write token of a record, the value of a
hold key), else answers with the current values so Python can decide again.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from asyncproc.errors import BadRequest

__all__ = [
    "ACQUIRE",
    "CREATE",
    "FORGET",
    "HOLDER",
    "PUT_DOC",
    "RELEASE",
    "RELEASE_START",
    "TRANSITION",
    "epoch_ms",
    "index_member",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The scripts that write a record tell the change with this (`rules.must_tell`).
_TELL = """
-- Publish `change` on `channel`; a channel written "?<channel>" only when some node
-- watches job `id` (P watched: id -> until when, epoch ms; `rules.must_tell`).
local function tell(channel, change, prefix, id)
  if string.sub(channel, 1, 1) == '?' then
    local until_ms = redis.call('ZSCORE', prefix .. 'watched', id)
    if not until_ms then return end
    local t = redis.call('TIME')
    if tonumber(until_ms) < t[1] * 1000 + math.floor(t[2] / 1000) then return end
    channel = string.sub(channel, 2)
  end
  redis.call('PUBLISH', channel, change)
end
"""
_MICROSECOND = timedelta(microseconds=1)

# KEYS: 1 job, 2 idx, 3 idx:kind, 4 due, 5 exp, 6 idx:key, 7 idx:parent, 8 hold,
#       9 the holder's job, 10 idx:owner (6..10 are "" when not used)
# ARGV: 1 record, 2 token, 3 member, 4 id, 5 deadline score, 6 expire ms, 7 hold value,
#       8 change, 9 channel, 10 expected hold value ("?": take the key only if free,
#       "": it is free, else the value read), 11 the holder's expected write token,
#       12 the holder's new record ("": no write), 13 its new token, 14 its change,
#       15 "1" when it finishes, 16 its expire ms, 17 its purge score, 18 its exp
#       member, 19 its id, 20 the key prefix, 21 the new job's state set (P st:..),
#       22 the holder's state set before ("": its state does not change), 23 after,
#       24 its score there, 25 the new job's kind (added to P kinds)
# Answers {0, record} the id exists, {1, record} this very create was applied already
# (a resent command), {2} created, {3, hold value, holder record, holder token} the
# key is not as expected ({3} alone: it is free now): Python decides again.
# The holder is read under P job:<id> from the hold value (a key not declared in
# KEYS): that saves the conflict path a round trip, and the store needs one server.
CREATE = (
    _TELL
    + """
local cur = redis.call('HMGET', KEYS[1], 'r', 'w')
if cur[1] then
  if cur[2] == ARGV[2] then return {1, cur[1]} end
  return {0, cur[1]}
end
if KEYS[8] ~= '' then
  local held = redis.call('GET', KEYS[8])
  local ok
  if ARGV[10] == '?' then ok = not held else ok = (held or '') == ARGV[10] end
  if ok and ARGV[12] ~= '' then
    ok = (redis.call('HGET', KEYS[9], 'w') or '') == ARGV[11]
  end
  if not ok then
    if not held then return {3} end
    local id = string.sub(held, string.find(held, '|', 1, true) + 1)
    local holder = redis.call('HMGET', ARGV[20] .. 'job:' .. id, 'r', 'w')
    return {3, held, holder[1], holder[2]}
  end
  if ARGV[12] ~= '' then
    redis.call('HSET', KEYS[9], 'r', ARGV[12], 'w', ARGV[13])
    if ARGV[15] == '1' then
      redis.call('PEXPIREAT', KEYS[9], ARGV[16])
      redis.call('ZREM', KEYS[4], ARGV[19])
      redis.call('ZADD', KEYS[5], ARGV[17], ARGV[18])
    end
    if ARGV[22] ~= '' then
      redis.call('ZREM', ARGV[22], ARGV[19])
      redis.call('ZADD', ARGV[23], ARGV[24], ARGV[19])
    end
    redis.call('PUBLISH', string.gsub(ARGV[9], '^%?', ''), ARGV[14])
  end
  redis.call('SET', KEYS[8], ARGV[7], 'PXAT', ARGV[6])
end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'w', ARGV[2], 'm', ARGV[3])
redis.call('ZADD', ARGV[21], ARGV[6], ARGV[4])
redis.call('SADD', ARGV[20] .. 'kinds', ARGV[25])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
if KEYS[6] ~= '' then redis.call('ZADD', KEYS[6], 0, ARGV[3]) end
if KEYS[7] ~= '' then redis.call('ZADD', KEYS[7], 0, ARGV[3]) end
if KEYS[10] ~= '' then redis.call('ZADD', KEYS[10], 0, ARGV[3]) end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
tell(ARGV[9], ARGV[8], ARGV[20], ARGV[4])
return {2}
"""
)

# KEYS: job, [due, exp, [hold]]  (the rest only for a finishing or un-finishing write)
# ARGV: expected token, new token, record, change, channel, has result, result, id,
#       then for a finishing write: expire ms, purge score, exp member, what becomes
#       of the key under rule `active`, and under rule `once` (`rules.KeyAfter`
#       values: the hold value names the rule, Python made both decisions), the job
#       the next holder waits for;
#       for an un-finishing write (`Revive`: terminal -> queued): "unfinish", expire
#       ms (an unfinished record's), deadline score, the exp member to remove
#       for a revived keyed job also KEYS[4] = its hold, the hold value expected (""
#       for none) and the new one;
#       always last (read from the end): what becomes of its lease (P lease; "": as
#       it is, "-": dropped, else held until that score: `lifecycle.lease_after`),
#       the record's state set before ("": its state does not change), the one
#       after, and its score there (when it expires)
# Answers {0} missing, {1, record, token} someone else wrote, {2} this very write was
# already applied (a retried command), {3} written, {5} the hold changed (decide again).
TRANSITION = (
    _TELL
    + """
local w = redis.call('HGET', KEYS[1], 'w')
if not w then return {0} end
if w ~= ARGV[1] then
  if w == ARGV[2] then return {2} end
  return {1, redis.call('HGET', KEYS[1], 'r'), w}
end
if ARGV[9] == 'unfinish' and KEYS[4] then
  -- A revived job takes its key again, provided the hold is what Python decided on.
  local held = redis.call('GET', KEYS[4]) or ''
  if held ~= ARGV[13] then return {5} end
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'w', ARGV[2], 'x', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'w', ARGV[2])
end
if ARGV[9] == 'unfinish' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[10])
  redis.call('ZADD', KEYS[2], ARGV[11], ARGV[8])
  redis.call('ZREM', KEYS[3], ARGV[12])
  if KEYS[4] then redis.call('SET', KEYS[4], ARGV[14], 'PXAT', ARGV[10]) end
elseif KEYS[2] then
  redis.call('PEXPIREAT', KEYS[1], ARGV[9])
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[3], ARGV[10], ARGV[11])
  if KEYS[4] then
    local held = redis.call('GET', KEYS[4])
    if held then
      local bar = string.find(held, '|', 1, true)
      if string.sub(held, bar + 1) == ARGV[8] then
        local rule = string.sub(held, 1, bar - 1)
        local fate = 'keep'
        if rule == 'active' then fate = ARGV[12] elseif rule == 'once' then fate = ARGV[13] end
        if fate == 'done' then
          redis.call('SET', KEYS[4], 'done|' .. ARGV[8])
        elseif fate == 'free' then
          redis.call('DEL', KEYS[4])
        elseif fate == 'wait' then
          redis.call('SET', KEYS[4], 'wait|' .. ARGV[14], 'KEEPTTL')
        end
      end
    end
  end
end
local n = #ARGV
if ARGV[n - 2] ~= '' then
  redis.call('ZREM', ARGV[n - 2], ARGV[8])
  redis.call('ZADD', ARGV[n - 1], ARGV[n], ARGV[8])
end
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[8] - 4)
local lease = ARGV[n - 3]
if lease == '-' then
  redis.call('ZREM', prefix .. 'lease', ARGV[8])
elseif lease ~= '' then
  redis.call('ZADD', prefix .. 'lease', lease, ARGV[8])
end
tell(ARGV[5], ARGV[4], prefix, ARGV[8])
return {3}
"""
)

# KEYS: job, idx, idx:kind, due, idx:key or '', idx:parent or '', hold or '',
#       idx:owner or ''
# ARGV: expected token, member, id, its state set
# Deletes a record nobody wrote since (the token), its index entries and its hold.
FORGET = """
if redis.call('HGET', KEYS[1], 'w') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', ARGV[4], ARGV[3])
if KEYS[5] ~= '' then redis.call('ZREM', KEYS[5], ARGV[2]) end
if KEYS[6] ~= '' then redis.call('ZREM', KEYS[6], ARGV[2]) end
if KEYS[8] ~= '' then redis.call('ZREM', KEYS[8], ARGV[2]) end
if KEYS[7] ~= '' then
  local held = redis.call('GET', KEYS[7])
  if held and string.sub(held, string.find(held, '|', 1, true) + 1) == ARGV[3] then
    redis.call('DEL', KEYS[7])
  end
end
return 1
"""

# KEYS: hold.  Frees a key held by a succeeded `once` job.
RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, 5) == 'done|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: hold.  ARGV: the key prefix.  Answers {} when the key is not held, else
# {hold value, the holder's record (nil when gone)}: one consistent read.
HOLDER = """
local held = redis.call('GET', KEYS[1])
if not held then return {} end
local id = string.sub(held, string.find(held, '|', 1, true) + 1)
return {held, redis.call('HGET', ARGV[1] .. 'job:' .. id, 'r')}
"""

# KEYS: doc:<space>.  ARGV: name, data, expected version ("": any; "0": none yet).
# Answers the new version, or -1 when the stored version is not the expected one.
PUT_DOC = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if cur then version = tonumber(string.sub(cur, 1, string.find(cur, '|', 1, true) - 1)) end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= version then return -1 end
version = version + 1
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', version) .. '|' .. ARGV[2])
return version
"""


# KEYS: lim:<kind>:run, :starts, :wait, :due.
# ARGV: 1 job id, 2 holder, 3 max_concurrency ("": none), 4 rate n ("": none),
#       5 window s, 6 lease_until, 7 now, 8 RATE_SLACK, 9 MIN_WAIT, 10 WAKE_EARLY,
#       11 STALE, 12 ttl s of the keys (epoch seconds throughout)
# The decision is `limits.start_wait` and `limits.spare_copy`, mirrored here so that
# an acquire is one atomic call. Answers the wait as a string ("0": granted, below 0:
# a spare copy, minus the seconds until its fallback is due), as Redis would truncate
# a Lua number to an integer.
ACQUIRE = """
local now = tonumber(ARGV[7])
local maxc = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local lease_until = tonumber(ARGV[6])
local slack = tonumber(ARGV[8])
local min_wait = tonumber(ARGV[9])
local running, earliest = 0, nil
if maxc then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[7])
  if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return '0' end
  running = redis.call('ZCARD', KEYS[1])
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then earliest = tonumber(first[2]) end
end
local starts, oldest = 0, nil
if n then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now - window - slack))
  starts = redis.call('ZCARD', KEYS[2])
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if first[2] then oldest = tonumber(first[2]) end
end
local wait = 0
if n and oldest and starts >= n then
  wait = math.max(min_wait, oldest + window + slack - now)
end
local full = maxc and running >= maxc
if full then
  local fallback = math.max(0, lease_until - now)
  if earliest then fallback = math.min(fallback, math.max(min_wait, earliest - now)) end
  wait = math.max(wait, fallback)
end
local ttl = tonumber(ARGV[12])
if wait <= 0 then
  if maxc then
    redis.call('ZADD', KEYS[1], ARGV[6], ARGV[2])
    redis.call('EXPIRE', KEYS[1], ttl)
  end
  if n then
    redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  return '0'
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.format('%.6f', now - tonumber(ARGV[11])))
if full then
  redis.call('ZADD', KEYS[3], 'NX', ARGV[7], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ttl)
end
local due = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]))
if due and now < due - tonumber(ARGV[10]) then return string.format('%.6f', now - due) end
redis.call('ZADD', KEYS[4], string.format('%.6f', now + wait), ARGV[1])
redis.call('EXPIRE', KEYS[4], ttl)
return string.format('%.6f', wait)
"""

# KEYS: lim:<kind>:run, :wait, :due.  ARGV: holder, now, STALE, the key prefix.
# Answers the oldest waiter still queued (taken off the waiters) when the holder held
# a permit, else nil; waiters stopped meanwhile, gone, or whose fallback is long
# overdue are dropped on the way. Records are read under P job:<id>, as HOLDER does.
RELEASE_START = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return nil end
local horizon = tonumber(ARGV[2]) - tonumber(ARGV[3])
while true do
  local popped = redis.call('ZPOPMIN', KEYS[2])
  if not popped[1] then return nil end
  local id = popped[1]
  local due = tonumber(redis.call('ZSCORE', KEYS[3], id))
  local record = redis.call('HGET', ARGV[4] .. 'job:' .. id, 'r')
  if due and due >= horizon and record and cjson.decode(record).state == 'queued' then
    return id
  end
  redis.call('ZREM', KEYS[3], id)
end
"""


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise BadRequest("cursor is not one this service handed out")
    return (moment - _EPOCH) // _MICROSECOND


def index_member(created_at: datetime, job_id: str) -> str:
    """The index member: sorts like (createdAt, id)."""
    return f"{_micros(created_at):020d}|{job_id}"


def epoch_ms(moment: datetime) -> int:
    """Epoch milliseconds, rounded down so a key never outlives its moment."""
    return math.floor(_micros(moment) / 1000)
