"""Expected failures are one line with the reason, never a traceback (issue 8, build item 3).

Each test here pins one place where an expected failure used to escape as an exception with a
traceback, or to be logged on every attempt: TLS files that cannot be loaded, a missing I2C bus,
a buffer that cannot be opened, a task group's `ConfigError` at the command line, and a panel
that cannot be written.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from drivers.sensors.i2c_bus import I2CBus
from gateway.app import _open_buffer
from gateway.cli import EXIT_CONFIG, main
from gateway.config import BufferConfig, TlsConfig
from gateway.deferred_i2c import DeferredI2C
from gateway.errors import ConfigError, StorageError
from gateway.mqtt_client import tls_context
from gateway.status.service import StatusService
from tests.gateway.status.helpers import FakeClock, reading, status_config
from tests.servers import wait_until
from tests.tls import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_pki(directory)
    encrypted = directory / "encrypted.key"
    command = "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes256 -pass pass:secret"
    subprocess.run(
        ["openssl", *command.split(), "-out", str(encrypted)], check=True, capture_output=True
    )
    return directory


def test_tls_files_that_cannot_be_loaded_are_config_errors_naming_the_key(pki: Path) -> None:
    ok = TlsConfig(
        ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
    )
    tls_context(ok)  # the good set loads
    cases = {
        "mqtt.tls.ca_file: cannot load /nope/ca.pem: No such file or directory": TlsConfig(
            ca_file=Path("/nope/ca.pem")
        ),
        f"mqtt.tls.ca_file: cannot load {pki / 'client.key'}: no certificate or crl found": (
            TlsConfig(ca_file=pki / "client.key")
        ),
        "key values mismatch": TlsConfig(cert_file=pki / "client.crt", key_file=pki / "ca.key"),
        "not a PEM file of the expected kind": TlsConfig(
            cert_file=pki / "client.crt", key_file=pki / "ca.crt"
        ),
        f"mqtt.tls.key_file: {pki / 'encrypted.key'} is encrypted": TlsConfig(
            cert_file=pki / "client.crt", key_file=pki / "encrypted.key"
        ),
    }
    for message, tls in cases.items():
        with pytest.raises(ConfigError) as info:
            tls_context(tls)
        assert message in str(info.value)
        assert "\n" not in str(info.value)


class _Bus:
    """A stand-in for an opened bus: records calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def try_lock(self) -> bool:
        self.calls.append("lock")
        return True

    def unlock(self) -> None:
        self.calls.append("unlock")

    def scan(self) -> list[int]:
        return [0x62]

    def deinit(self) -> None:
        self.calls.append("deinit")


def test_a_missing_i2c_bus_fails_its_transactions_until_it_appears() -> None:
    bus = _Bus()
    attempts: list[str] = []

    def opener(spec: str) -> I2CBus:
        attempts.append(spec)
        if len(attempts) < 3:
            raise RuntimeError("I2C Bus #1 not found, check if enabled in config!")
        return bus  # type: ignore[return-value]

    deferred = DeferredI2C("/dev/i2c-1", opener=opener)
    assert attempts == []  # nothing is opened when the daemon assembles its buses
    deferred.unlock()  # harmless before any open
    for _ in range(2):
        with pytest.raises(OSError) as info:
            deferred.try_lock()
        assert info.value.errno == errno.ENODEV
        assert "cannot open the I2C bus /dev/i2c-1: I2C Bus #1 not found" in str(info.value)
    assert deferred.try_lock() and deferred.scan() == [0x62]
    deferred.unlock()
    assert len(attempts) == 3  # opened once it could be, then kept
    deferred.deinit()
    assert bus.calls == ["lock", "unlock", "deinit"]


def test_the_real_missing_bus_is_a_device_timeout_of_the_driver() -> None:
    from drivers.sensors.scd4x import Scd4xDriver  # noqa: PLC0415
    from gateway.errors import DeviceTimeout  # noqa: PLC0415

    driver = Scd4xDriver(bus=DeferredI2C("/dev/i2c-99"))
    with pytest.raises(DeviceTimeout, match="cannot open the I2C bus /dev/i2c-99"):
        asyncio.run(driver.open())


def test_a_buffer_that_cannot_be_opened_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = BufferConfig(path=tmp_path / "file" / "buffer.sqlite3")
    with pytest.raises(StorageError, match=r"^buffer\.path: cannot open .*file/buffer\.sqlite3"):
        _open_buffer(config)


def test_a_task_groups_config_error_is_one_line_at_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway bridge` runs its task in a task group, which wraps the error in a group."""
    monkeypatch.delenv("CANARY_TEST_UNSET", raising=False)
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[site]\nid = "kg"\n[mqtt]\nport = 1\nusername = "u"\n'
        'password = { env = "CANARY_TEST_UNSET" }\n'
        '[influxdb]\nurl = "http://127.0.0.1:1"\norg = "o"\nbucket = "b"\n'
    )
    assert main(["bridge", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err == "config error: environment variable CANARY_TEST_UNSET is not set\n"


class _FlakyBackend:
    """A panel backend that fails while ``failing`` is set; counts the attempts."""

    def __init__(self) -> None:
        self.failing = True
        self.attempts = 0

    def show(self, image: Image.Image) -> None:
        self.attempts += 1
        if self.failing:
            raise OSError(errno.EROFS, "Read-only file system")


def test_a_failing_panel_is_logged_once_and_its_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.status.service")
    room = status_config().status.rooms[0].model_dump()
    room["led"] = None
    room["panel"] = {"size": "250x122", "backend": "png", "path": str(tmp_path / "p.png")}
    clock = FakeClock()
    service = StatusService(
        config=status_config(rooms=[room]),
        clock=clock,
        wall=clock.wall,
        publish=False,
        panel_min_interval=0.0,
    )
    backend = _FlakyBackend()
    service.panels["ladybird"].backend = backend

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        for n, co2 in enumerate((500, 1200, 1600, 700), start=1):
            if n == 4:
                backend.failing = False
            service.observe([reading("ladybird-co2", "co2", co2, at=n)])
            await asyncio.to_thread(
                wait_until, lambda n=n: backend.attempts >= n, timeout=10, what="a refresh"
            )
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        service.close()
    records = [(r.levelno, r.getMessage()) for r in caplog.records if "panel" in r.getMessage()]
    assert records == [
        (logging.ERROR, "panel refresh failed: [Errno 30] Read-only file system"),
        (logging.DEBUG, "panel refresh failed again: [Errno 30] Read-only file system"),
        (logging.DEBUG, "panel refresh failed again: [Errno 30] Read-only file system"),
        (logging.INFO, "panel refresh works again"),
    ]
