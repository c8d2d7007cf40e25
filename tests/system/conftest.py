"""Fixtures of the system tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.system.harness import Process


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop(signal.SIGKILL)
