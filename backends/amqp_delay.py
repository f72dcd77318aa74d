"""Delayed messages on RabbitMQ: TTL queues that dead-letter into the jobs exchange.

A message delayed by `d` waits in the durable queue `P + "delay." + ms + "." + r`
of its routing `r`, where `ms` is the smallest *bucket* not below `d`. The queue
has `x-message-ttl` = ms and dead-letters to the jobs exchange with routing key
`r`, so an expired message lands on `r`'s queue like a fresh publish (the delivery
is not flagged redelivered). Nothing re-publishes and no worker holds it.

Why buckets with a per-message `expiration`, not one queue per distinct delay:
retry backoff is jittered, so nearly every delay is distinct, and a queue per
millisecond value would mean a queue declaration per retry and thousands of
queues. Buckets (four per doubling) keep a few dozen queues per routing, which
`delete` can also find without listing the broker. Each message also carries its
exact delay as `expiration`, so it leaves on time unless an earlier message of
the same bucket with a later due time is ahead of it (a classic queue expires
only its head): then it is late by less than the bucket's width (about 19 % of
the delay). Never early: a bucket is at least the delay.

Unused delay queues go away by themselves (`x-expires`, the bucket plus
`IDLE_MS`); a publisher declares a queue again before that lease can run out
under a message it published, since publishing does not count as use.
"""

from __future__ import annotations

import math

from pamqp.common import FieldTable

__all__ = [
    "BUCKETS_MS",
    "IDLE_MS",
    "REDECLARE_AFTER",
    "bucket_for",
    "delay_arguments",
    "delay_ms",
    "delay_queue_name",
]

# ceil(2^(k/4)) ms: four buckets per doubling, from 1 ms to about 42 days (the
# largest under RabbitMQ's TTL limit of 2^32 - 1 ms).
BUCKETS_MS: tuple[int, ...] = tuple(sorted({math.ceil(2 ** (k / 4)) for k in range(128)}))
# How long an unused delay queue outlives its TTL before the broker deletes it.
IDLE_MS = 600_000
# A publisher re-declares a delay queue it last declared this long ago (seconds):
# the queue then outlives any message published since by at least the rest of IDLE_MS.
REDECLARE_AFTER = IDLE_MS / 1000 / 2


def delay_ms(delay: float) -> int:
    """`delay` seconds as whole milliseconds, rounded up (never early); 0 for none."""
    if delay <= 0:
        return 0
    return max(1, math.ceil(delay * 1000))


def bucket_for(ms: int) -> int:
    """The smallest bucket not below `ms`; the largest bucket beyond it (about 42
    days: such a message arrives then, and the worker queues the job again)."""
    for bucket in BUCKETS_MS:
        if bucket >= ms:
            return bucket
    return BUCKETS_MS[-1]


def delay_queue_name(prefix: str, routing: str, bucket: int) -> str:
    """The delay queue of `routing` for `bucket` ms (the ms first: routings hold dots)."""
    return f"{prefix}delay.{bucket}.{routing}"


def delay_arguments(exchange: str, routing: str, bucket: int) -> FieldTable:
    """The declare arguments of a delay queue: expire into `exchange` with `routing`."""
    return {
        "x-message-ttl": bucket,
        "x-expires": bucket + IDLE_MS,
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": routing,
    }
