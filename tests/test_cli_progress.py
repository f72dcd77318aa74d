"""The progress bar of `submit --wait` / `stop --wait`: its timer is the job's own
running time, so a bar shown again after Ctrl-C does not restart at 0:00:00."""

from __future__ import annotations

import io
import re
from datetime import timedelta

from rich.console import Console

from asyncproc.cli import ProgressView
from asyncproc.model import Job, JobState, Progress, utcnow


def shown(job: Job) -> str:
    """What a fresh bar shows for `job` on a terminal 120 columns wide."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    with ProgressView(console) as view:
        view.update(job.status())
    return out.getvalue()


def job(**fields: object) -> Job:
    now = utcnow()
    values: dict[str, object] = {
        "id": "0" * 32,
        "kind": "demo.count",
        "state": JobState.RUNNING,
        "created_at": now - timedelta(minutes=2),
        "deadline": now + timedelta(hours=1),
        "retention": 60.0,
        "progress": Progress(percent=40.0, biz_step="counting"),
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def test_a_new_bar_shows_the_time_since_the_job_started() -> None:
    started = utcnow() - timedelta(minutes=1, seconds=5)
    text = shown(job(started_at=started))
    assert re.search(r"\b0:01:0[5-9]\b", text), text
    assert "0:00:00" not in text


def test_a_finished_job_shows_its_run_time_and_a_queued_one_none() -> None:
    started = utcnow() - timedelta(hours=1)
    finished = started + timedelta(seconds=42)
    done = shown(job(state=JobState.STOPPED, started_at=started, finished_at=finished))
    assert "0:00:42" in done
    waiting = shown(job(state=JobState.QUEUED))
    assert "-:--:--" in waiting
