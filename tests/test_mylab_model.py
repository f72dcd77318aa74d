"""The MyLab mapping (plugins/mylab_model.py) as pure functions of job records: the
cases the routes cannot easily reach (a retry, a timeout, a lost job), each output
checked against its MyLab schema."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from asyncproc.lifecycle import Fail, Report, Retry, Start, Succeed, TimeOut, apply
from asyncproc.model import ErrorInfo, Job, JobState, utcnow
from asyncproc.plugins.mylab_model import callback_message, request_details, request_status
from tests.mylab_schemas import CALLBACK_MESSAGE, REQUEST_DETAILS, REQUEST_STATUS, checked


def queued() -> Job:
    now = utcnow()
    return Job(
        id="r1",
        kind="mylab.req",
        state=JobState.QUEUED,
        created_at=now,
        deadline=now + timedelta(hours=1),
        retention=60.0,
        callback_routing="client1",
    )


def status(job: Job, *, expose: bool = False) -> Any:
    encoded = msgspec.json.encode(request_status(job, expose_tech_info=expose))
    return checked(msgspec.json.decode(encoded), REQUEST_STATUS)


def told(before: Job, after: Job, result: bytes | None = None, *, expose: bool = False) -> Any:
    message = callback_message(before, after, result, expose_tech_info=expose)
    if message is None:
        return None
    return checked(msgspec.json.decode(msgspec.json.encode(message)), CALLBACK_MESSAGE)


def test_a_job_waiting_for_a_retry_is_pending_and_says_so() -> None:
    now = utcnow()
    running = apply(queued(), Start(), now)
    lost = ErrorInfo(error_id="lost", tech_msg="the worker running this job was lost")
    again = apply(running, Retry(lost, now + timedelta(seconds=5), running.attempt), now)
    assert again.state is JobState.QUEUED
    # Its error is the failed attempt's, not the request's: a pending request has none.
    assert status(again) == {"processStep": "pending", "successful": False}
    assert told(running, again) == {"reqId": "r1", "newProcStep": "Pending"}


def test_a_timed_out_job_completes_with_error_timeout() -> None:
    now = utcnow()
    running = apply(queued(), Start(), now)
    late = apply(running, TimeOut(), now)
    assert status(late)["error"]["errorId"] == "timeout"
    message = told(running, late)
    assert (message["newProcStep"], message["error"]["errorId"]) == ("Completed", "timeout")


def test_tech_info_and_error_ids_in_messages() -> None:
    now = utcnow()
    running = apply(queued(), Start(), now)
    failed = apply(running, Fail(ErrorInfo(tech_msg="boom", tech_info="trace")), now)
    assert status(failed)["error"] == {"techMgs": "boom"}
    assert status(failed, expose=True)["error"] == {"techMgs": "boom", "techInfo": "trace"}
    # The callback schema requires an errorId: one without gets the default.
    assert told(running, failed)["error"] == {"techMgs": "boom", "errorId": "processing_error"}
    assert told(running, failed, expose=True)["error"]["techInfo"] == "trace"


def test_only_process_and_biz_steps_are_told() -> None:
    now = utcnow()
    running = apply(queued(), Start(), now)
    assert told(queued(), running) == {"reqId": "r1", "newProcStep": "Processing"}
    assert callback_message(None, queued(), None, expose_tech_info=False) is None
    stepped = apply(running, Report(biz_step="loading"), now)
    assert told(running, stepped) == {"reqId": "r1", "newBizStep": "loading"}
    assert told(stepped, apply(stepped, Report(percent=50.0), now)) is None


def test_details_carry_a_json_result_as_it_is_and_other_bytes_in_base64() -> None:
    now = utcnow()
    running = apply(queued(), Start(), now)
    as_json = apply(running, Succeed(9, "application/json; charset=utf-8"), now)
    details = request_details(as_json, b'{"a": [1]}', expose_tech_info=False)
    decoded = checked(msgspec.json.decode(msgspec.json.encode(details)), REQUEST_DETAILS)
    assert decoded["resObj"] == {"a": [1]}
    as_bytes = apply(running, Succeed(2, "image/png"), now)
    details = request_details(as_bytes, b"\x89P", expose_tech_info=False)
    decoded = checked(msgspec.json.decode(msgspec.json.encode(details)), REQUEST_DETAILS)
    assert decoded["resBin"] == "iVA="
    assert told(running, as_bytes, b"\x89P")["resBin"] == "iVA="
