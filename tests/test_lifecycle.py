"""The pure state machine: every event in every state, as API.md section 3 draws it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from asyncproc.errors import TransitionRefused
from asyncproc.lifecycle import (
    TRANSITIONS,
    Event,
    Fail,
    Report,
    RequestStop,
    Retry,
    Start,
    Stopped,
    Succeed,
    TimeOut,
    apply,
)
from asyncproc.model import ErrorInfo, Job, JobState

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=5)
ERROR = ErrorInfo(error_id="x", tech_msg="boom")

EVENTS: list[Event] = [
    Start(),
    Report(50.0, "step", "msg"),
    Succeed(3, "text/plain"),
    Fail(ERROR),
    Retry(ERROR),
    RequestStop(),
    Stopped(),
    TimeOut(),
]


def job(state: JobState = JobState.QUEUED, **fields: object) -> Job:
    base = Job(
        id="j1",
        kind="k",
        state=JobState.QUEUED,
        created_at=T0,
        deadline=T0 + timedelta(minutes=1),
        retention=60.0,
    )
    return msgspec.structs.replace(base, state=state, **fields)


def running(**fields: object) -> Job:
    return apply(job(**fields), Start(), NOW)


def test_the_table_is_the_contract() -> None:
    q, r = JobState.QUEUED, JobState.RUNNING
    ok, ko, st = JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED
    assert TRANSITIONS[Start] == {q: r}
    assert TRANSITIONS[Succeed] == {r: ok}
    assert TRANSITIONS[Fail] == {q: ko, r: ko}
    assert TRANSITIONS[Retry] == {r: q}
    assert TRANSITIONS[RequestStop] == {q: st, r: r, st: st}
    assert TRANSITIONS[Stopped] == {r: st}
    assert TRANSITIONS[TimeOut] == {q: ko, r: ko}


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED])
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_terminal_states_never_change(state: JobState, event: Event) -> None:
    finished = job(state, finished_at=NOW)
    if state is JobState.STOPPED and isinstance(event, RequestStop):
        assert apply(finished, event, NOW) is finished  # idempotent, nothing written
        return
    with pytest.raises(TransitionRefused) as refused:
        apply(finished, event, NOW)
    assert refused.value.job is finished


def test_start_counts_attempts_and_stamps_start() -> None:
    started = running()
    assert started.state is JobState.RUNNING
    assert started.attempt == 1
    assert started.started_at == NOW
    assert started.version == 2


def test_start_past_the_deadline_times_out_in_the_queue() -> None:
    late = apply(job(), Start(), T0 + timedelta(minutes=2))
    assert late.state is JobState.FAILED
    assert late.error is not None
    assert late.error.error_id == "timeout"
    assert late.started_at is None


def test_report_merges_and_clamps() -> None:
    first = apply(running(), Report(150.0, "load", None), NOW)
    assert first.progress.percent == 100.0
    second = apply(first, Report(None, None, "row 3"), NOW)
    assert (second.progress.biz_step, second.progress.message) == ("load", "row 3")
    assert second.version == first.version + 1
    assert apply(second, Report(None, None, "row 3"), NOW) is second  # no change, no write


def test_succeed_sets_percent_result_and_finish() -> None:
    done = apply(running(), Succeed(3, "text/plain"), NOW)
    assert done.progress.percent == 100.0
    assert (done.result_size, done.result_mime) == (3, "text/plain")
    assert done.finished_at == NOW
    assert done.expires_at == NOW + timedelta(seconds=60)
    empty = apply(running(), Succeed(None, "ignored"), NOW)
    assert empty.result_mime is None


def test_stop_queued_is_final_stop_running_is_a_request() -> None:
    stopped = apply(job(), RequestStop(), NOW)
    assert stopped.state is JobState.STOPPED
    assert stopped.finished_at == NOW
    with pytest.raises(TransitionRefused):
        apply(stopped, Start(), NOW)
    asked = apply(running(), RequestStop(), NOW)
    assert asked.state is JobState.RUNNING
    assert asked.stop_requested
    assert apply(asked, RequestStop(), NOW) is asked
    assert apply(asked, Stopped(), NOW).state is JobState.STOPPED


def test_stopped_needs_a_stop_request() -> None:
    with pytest.raises(TransitionRefused):
        apply(running(), Stopped(), NOW)


def test_retry_requeues_and_the_next_start_counts() -> None:
    again = apply(running(), Retry(ERROR), NOW)
    assert again.state is JobState.QUEUED
    assert again.error == ERROR
    assert apply(again, Start(), NOW).attempt == 2


def test_expires_at_is_deadline_until_finished() -> None:
    assert job().expires_at == T0 + timedelta(minutes=1)


def test_status_hides_tech_info_unless_exposed() -> None:
    failed = apply(running(), Fail(ErrorInfo(tech_msg="m", tech_info="Traceback")), NOW)
    hidden = failed.status().error
    shown = failed.status(expose_tech_info=True).error
    assert hidden is not None
    assert hidden.tech_info is None
    assert shown is not None
    assert shown.tech_info == "Traceback"


def test_a_replacing_job_starts_only_when_vouched_for() -> None:
    waiting = job(after="old")
    with pytest.raises(TransitionRefused) as refused:
        apply(waiting, Start(), NOW)
    assert refused.value.job is waiting
    started = apply(waiting, Start(after_ended=True), NOW)
    assert (started.state, started.attempt) == (JobState.RUNNING, 1)
    # A job with no predecessor starts either way.
    assert apply(job(), Start(after_ended=True), NOW).state is JobState.RUNNING
