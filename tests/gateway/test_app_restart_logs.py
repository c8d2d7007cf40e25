"""The daemon as an operator sees it: a task failing in a restart loop logs one line per episode.

`gateway run` is started as a subprocess, exactly as systemd starts it, with `RESTART_PAUSE`
patched short so that a few restart cycles take a second rather than half a minute. The MQTT
task fails three ways in turn, each a different episode: the password file is missing, then
(once the test writes it) the TLS CA file is missing, then (once the test writes garbage into
it) the CA file is not PEM. A missing I2C bus (``/dev/i2c-99``) fails the device on it. Before
each change the test waits until the DEBUG log shows the task restarted at least three times in
that episode, so the assertions count episodes, not luck.

Pinned: stderr holds no traceback (every line is a log record); above DEBUG there is exactly one
line per episode, each naming its reason; the repeats are at DEBUG only; and the daemon still
stops cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

#: The daemon, with the restart pause patched (the constant is read at each restart).
LAUNCH = (
    "import sys, gateway.app; gateway.app.RESTART_PAUSE = 0.1; "
    "from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
)
#: A log record's first line (gateway/cli.py's format).
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")


def test_a_restart_loop_logs_one_line_per_episode_and_no_traceback(tmp_path: Path) -> None:
    password, ca = tmp_path / "mqtt-password", tmp_path / "ca.pem"
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[site]\nid = "kg-test"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\nusername = "kg-test"\n'
        f'password = {{ file = "{password}" }}\ntls = {{ ca_file = "{ca}" }}\n'
        f'[buffer]\npath = "{tmp_path / "buffer.sqlite3"}"\n'
        '[clock]\nsync = "none"\n'
        '[[devices]]\nid = "room"\ndriver = "scd4x"\nbus = "/dev/i2c-99"\n'
    )
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--log-level", "debug", "run", "--config", str(config)],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:

        def restarted_three_times(reason: str) -> bool:
            text = stderr_path.read_text()
            return any(
                "failed again (3 times in a row)" in line and reason in line
                for line in text.splitlines()
            )

        def wait_for(reason: str) -> None:
            wait_until(
                lambda: restarted_three_times(reason) or proc.poll() is not None,
                timeout=60,
                what=f"three restarts failing with {reason!r}",
            )
            assert proc.poll() is None, stderr_path.read_text()[-3000:]

        wait_for("cannot read credentials")
        password.write_text("secret\n")
        wait_for("mqtt.tls.ca_file: cannot load")
        ca.write_text("not a certificate\n")
        wait_for("no certificate or crl found")
        wait_until(
            lambda: "device room unavailable" in stderr_path.read_text(),
            timeout=30,
            what="the I2C device to be reported",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    text = stderr_path.read_text()
    assert "Traceback" not in text
    lines = text.splitlines()
    # Every line is a log record: nothing (a traceback, a thread's dump) in between.
    assert all(RECORD.match(line) for line in lines), [ln for ln in lines if not RECORD.match(ln)]
    loud = [line for line in lines if " DEBUG " not in line[:32] and " INFO " not in line[:32]]
    mqtt = [line for line in loud if "task mqtt" in line]
    assert len(mqtt) == 3, loud
    assert all(" ERROR " in line and "task mqtt failed: " in line for line in mqtt), mqtt
    assert f"{password}: cannot read credentials: No such file" in mqtt[0]
    assert f"mqtt.tls.ca_file: cannot load {ca}: No such file" in mqtt[1]
    assert f"mqtt.tls.ca_file: cannot load {ca}: no certificate or crl found" in mqtt[2]
    device = [line for line in loud if "device room" in line]
    assert len(device) == 1, loud
    assert "cannot open the I2C bus /dev/i2c-99" in device[0]
    assert sorted(loud) == sorted([*mqtt, *device])  # and nothing else above INFO
    # The repeats were there, at DEBUG: each episode restarted at least three times.
    repeats = [line for line in lines if " DEBUG " in line[:32] and "failed again" in line]
    assert len(repeats) >= 6
