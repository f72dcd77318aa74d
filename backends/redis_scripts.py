"""The Lua scripts of the Redis StateStore, and the key layout they keep.

Keys, all under the prefix P:

    P job:<id>           hash    r: record (msgspec JSON), w: write token,
                                 m: index member, x: result bytes
    P idx                zset    every job; members "<createdAt µs, 20 digits>|<id>",
                                 all scores 0, so lexical order is (createdAt, id)
    P idx:kind:<kind>    zset    the same members, one kind
    P idx:key:<key>      zset    the same members, one business key
    P due                zset    ids of unfinished jobs, scored by deadline
    P exp                zset    [id, member, kind, key] of finished jobs, scored by purge time
    P hold:<kind>:<key>  string  "<rule>|<id>" while a job holds the key,
                                 "done|<id>" for a succeeded `once` job
    P changes            pub/sub channel of msgpack-encoded `Change`s
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from asyncproc.errors import BadRequest

__all__ = ["CREATE", "RELEASE", "TRANSITION", "epoch_ms", "index_member"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# KEYS: job, idx, idx:kind, due, [idx:key, [hold]]
# ARGV: record, token, member, id, deadline score, expire ms, rule, change, channel
CREATE = """
local cur = redis.call('HMGET', KEYS[1], 'r', 'w')
if cur[1] then
  if cur[2] == ARGV[2] then return {1, cur[1]} end
  return {0, cur[1]}
end
if KEYS[6] then
  local held = redis.call('GET', KEYS[6])
  if held then return {-1, string.sub(held, string.find(held, '|', 1, true) + 1)} end
  redis.call('SET', KEYS[6], ARGV[7] .. '|' .. ARGV[4], 'PXAT', ARGV[6])
end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'w', ARGV[2], 'm', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
if KEYS[5] then redis.call('ZADD', KEYS[5], 0, ARGV[3]) end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
redis.call('PUBLISH', ARGV[9], ARGV[8])
return {1}
"""

# KEYS: job, [due, exp, [hold]]  (the rest only for a finishing write)
# ARGV: expected token, new token, record, change, channel, has result, result,
#       id, expire ms, purge score, exp member, succeeded
# Answers {0} missing, {1, record, token} someone else wrote, {2} this very write was
# already applied (a retried command), {3} written.
TRANSITION = """
local w = redis.call('HGET', KEYS[1], 'w')
if not w then return {0} end
if w ~= ARGV[1] then
  if w == ARGV[2] then return {2} end
  return {1, redis.call('HGET', KEYS[1], 'r'), w}
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'w', ARGV[2], 'x', ARGV[7])
else
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'w', ARGV[2])
end
if KEYS[2] then
  redis.call('PEXPIREAT', KEYS[1], ARGV[9])
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[3], ARGV[10], ARGV[11])
  if KEYS[4] then
    local held = redis.call('GET', KEYS[4])
    if held then
      local bar = string.find(held, '|', 1, true)
      if string.sub(held, bar + 1) == ARGV[8] then
        if ARGV[12] == '1' and string.sub(held, 1, bar - 1) == 'once' then
          redis.call('SET', KEYS[4], 'done|' .. ARGV[8])
        else
          redis.call('DEL', KEYS[4])
        end
      end
    end
  end
end
redis.call('PUBLISH', ARGV[5], ARGV[4])
return {3}
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
