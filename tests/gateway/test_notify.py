"""The sd_notify sender (gateway/notify.py) against a socket written from sd_notify(3), and the
journald log format (gateway/logs.py)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.logs import JournalFormatter, to_journal
from gateway.notify import Notifier
from tests.notify_peer import NotifyPeer
from tests.servers import wait_until


def test_fields_arrive_as_one_datagram_of_key_value_lines() -> None:
    peer = NotifyPeer()
    try:
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": peer.path, "WATCHDOG_USEC": "4000000"}
        )
        assert notifier.watchdog_seconds == 4.0
        notifier.ready("11 devices\nsecond line")  # a newline would start a bogus field
        notifier.ping("ok")
        wait_until(lambda: len(peer.snapshot()) == 2, timeout=5, what="two datagrams")
        first, second = (m.fields for m in peer.snapshot())
        assert first == {"READY": "1", "STATUS": "11 devices second line"}
        assert second == {"WATCHDOG": "1", "STATUS": "ok"}
        notifier.close()
    finally:
        peer.close()


def test_abstract_socket_address() -> None:
    name = f"canary-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    try:
        Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).send(READY="1")
        assert server.recv(100) == b"READY=1"
    finally:
        server.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled and notifier.watchdog_seconds is None
    notifier.ready("x")
    notifier.ping("x")


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert notifier.watchdog_seconds is None


def test_an_unreachable_socket_is_logged_once_and_never_raises(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="gateway.notify"):
        for _ in range(5):
            notifier.ping("x")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    formatter = JournalFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "gateway.x", logging.ERROR, __file__, 1, "failed %s", ("a",), sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0] == "<3>gateway.x: failed a"
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    warning = logging.LogRecord("g", logging.WARNING, __file__, 1, "w", (), None)
    info = logging.LogRecord("g", logging.INFO, __file__, 1, "i", (), None)
    debug = logging.LogRecord("g", logging.DEBUG, __file__, 1, "d", (), None)
    assert [formatter.format(r)[:3] for r in (warning, info, debug)] == ["<4>", "<6>", "<7>"]


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        assert to_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not to_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not to_journal(stream, {})


def test_the_daemon_logs_for_journald_when_its_stderr_is_the_journal(tmp_path: Path) -> None:
    """Through the console script: priority prefixes and no timestamp of ours."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[site]\nid = "kg"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        f'[buffer]\npath = "{tmp_path / "b.sqlite3"}"\n[clock]\nsync = "none"\n'
    )
    log = tmp_path / "stderr"
    gateway = str(Path(sys.executable).with_name("gateway"))
    with log.open("wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen(
            [gateway, "run", "--config", str(config)], stderr=err, stdout=err, env=env
        )
        try:
            wait_until(lambda: b"cannot connect" in log.read_bytes(), timeout=20, what="a warning")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in {"<3>", "<4>", "<6>", "<7>"} for line in lines), lines
    assert any(line.startswith("<4>gateway.sinks.mqtt: cannot connect") for line in lines), lines
    assert not any(time.strftime("%Y-") in line for line in lines), "a duplicate timestamp"
