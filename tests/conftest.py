"""Fixtures for every test: the anyio backend, real-server URLs, unique names."""

from __future__ import annotations

import uuid

import pytest

from tests.support import service_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server of the tests (ASYNCPROC_TEST_REDIS_URL)."""
    return service_url("ASYNCPROC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The RabbitMQ broker of the tests (ASYNCPROC_TEST_AMQP_URL)."""
    return service_url("ASYNCPROC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def unique_prefix() -> str:
    """A key prefix / queue-name prefix no other test uses."""
    return f"asyncproc-test-{uuid.uuid4().hex[:12]}:"
