"""The task supervisor (`gateway.app._supervise`): restarts, and logs what an operator needs.

Pinned: one line per episode above DEBUG. An expected failure (a `GatewayError`) is one line,
never a traceback; a bug is logged with its traceback when its episode starts; the repeats of
either are at DEBUG only (a bug's with its traceback); a different error starts a new episode; a
task that returns is not restarted. The daemon as a whole is pinned in test_app_restart_logs.py.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import gateway.app
from gateway.app import _supervise
from gateway.errors import ConfigError


def test_expected_failures_are_one_line_and_a_bug_has_one_traceback_per_episode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.app")
    monkeypatch.setattr(gateway.app, "RESTART_PAUSE", 0.001)
    script: list[Exception | None] = [
        ConfigError("broker refused the client certificate"),
        ConfigError("broker refused the client certificate"),
        RuntimeError("a bug"),
        RuntimeError("a bug"),
        RuntimeError("a bug"),
        None,  # returns: done
    ]
    calls = 0

    async def run() -> None:
        nonlocal calls
        calls += 1
        error = script.pop(0)
        if error is not None:
            raise error

    asyncio.run(_supervise("mqtt", run))

    assert calls == 6
    records = [(r.levelno, r.exc_info is not None) for r in caplog.records]
    assert records == [
        (logging.ERROR, False),  # the expected failure: one line, no traceback
        (logging.DEBUG, False),  # its repeat: at DEBUG only
        (logging.ERROR, True),  # a bug: a new episode, with the traceback
        (logging.DEBUG, True),  # its repeats: at DEBUG only, with the traceback
        (logging.DEBUG, True),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert "client certificate" in messages[0] and "client certificate" in messages[1]
    assert "2 times" in messages[1]
    assert "3 times" in messages[4]


def test_a_failure_after_a_stable_run_starts_a_new_episode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same error again after the task ran `STABLE_RUN` is news: logged at ERROR again."""
    caplog.set_level(logging.DEBUG, logger="gateway.app")
    monkeypatch.setattr(gateway.app, "RESTART_PAUSE", 0.001)
    monkeypatch.setattr(gateway.app, "STABLE_RUN", 0.0)  # every run counts as a stable one
    script: list[Exception | None] = [ConfigError("broker away"), ConfigError("broker away"), None]

    async def run() -> None:
        error = script.pop(0)
        if error is not None:
            raise error

    asyncio.run(_supervise("mqtt", run))
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]
