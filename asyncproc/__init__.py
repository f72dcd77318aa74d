"""asyncproc: run long operations asynchronously behind a REST API.

The job SDK for plugins: `Registry` (its `job` decorator), `JobContext`,
`BlockingJobContext`, `Result`, `JobError`, `RetryableJobError`, `JobStopped`.
"""

from __future__ import annotations

from .context import BlockingJobContext, JobContext, Result
from .errors import JobError, JobStopped, RetryableJobError
from .model import JobState, JobStatus, Uniqueness
from .registry import Registry

__all__ = [
    "BlockingJobContext",
    "JobContext",
    "JobError",
    "JobState",
    "JobStatus",
    "JobStopped",
    "Registry",
    "Result",
    "RetryableJobError",
    "Uniqueness",
]
