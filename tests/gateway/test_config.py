"""Configuration contract: valid files load, every invalid one gives one line naming file and key path.

Golden cases live in ``tests/cases/config/<name>/{gateway.toml, error.txt}``; ``{file}`` in
``error.txt`` stands for the path of the TOML file. To add a case, add a folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_CONFIG, EXIT_OK, main
from gateway.config import Credentials, load_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "tests" / "cases" / "config").iterdir())


def test_there_are_at_least_ten_invalid_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invalid_config_gives_one_line_naming_the_key(
    case: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = case / "gateway.toml"
    expected = (case / "error.txt").read_text().replace("{file}", str(path))
    assert main(["check", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err == expected
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_shipped_configs_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo passes `gateway check --simulate` (it runs from a shell, not under the unit);
    the site example is a valid file (what `gateway check` says of it on a prepared Pi is
    pinned in test_check.py)."""
    assert main(["check", "--simulate", "--config", str(ROOT / "gateway" / "demo.toml")]) == EXIT_OK
    assert ": ok (site kg-sunflower" in capsys.readouterr().out
    assert load_config(ROOT / "config" / "example.toml").site.id == "kg-sunflower"


def test_console_script_prints_no_traceback_for_a_bad_file() -> None:
    """The installed entry point, as an installer would run it."""
    case = ROOT / "tests" / "cases" / "config" / "unknown-device-key" / "gateway.toml"
    gateway = Path(sys.executable).with_name("gateway")
    result = subprocess.run(
        [str(gateway), "check", "--config", str(case)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.startswith(f"config error: {case}: devices[0].colour: unknown key")
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


def test_several_errors_give_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[site]\nid = "ok"\n[mqtt]\nport = 0\nkeepalive = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}: mqtt.port: expected a number >= 1 (got 0)",
        f"{path}: mqtt.keepalive: expected an integer (got 'x')",
    ]


def test_defaults_and_loaded_values(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[site]\nid = "kg"\n[buffer]\npath = "/data/b.sqlite3"\n'
        '[[devices]]\nid = "c"\ndriver = "scd4x"\naddress = 0x62\n'
    )
    config = load_config(path)
    assert config.mqtt.port == 1883
    assert config.mqtt.topic_prefix == "canary"
    assert config.buffer.path == Path("/data/b.sqlite3")
    (device,) = config.devices
    assert device.driver == "scd4x"
    assert device.interval == 5.0
    assert device.bus_key() == "i2c:/dev/i2c-1"


def test_secrets_come_from_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CANARY_TEST_SECRET", "s3cret")
    assert Credentials(env="CANARY_TEST_SECRET").resolve() == "s3cret"
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    assert Credentials(file=secret).resolve() == "from-file"
    monkeypatch.delenv("CANARY_TEST_SECRET")
    with pytest.raises(ConfigError, match="CANARY_TEST_SECRET is not set"):
        Credentials(env="CANARY_TEST_SECRET").resolve()
    assert "CANARY_TEST_SECRET" not in os.environ


def test_canary_keys_scd4x_compensation_and_pmsa003i(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[site]\nid = "kg"\n'
        '[[devices]]\nid = "co2"\ndriver = "scd4x"\nbus = "/dev/i2c-1"\n'
        "self_calibration = false\naltitude_m = 520\ntemperature_offset_c = 3\nstuck_polls = 0\n"
        '[[devices]]\nid = "pm"\ndriver = "pmsa003i"\nbus = "/dev/i2c-1"\n'
    )
    co2, pm = load_config(path).devices
    assert co2.driver == "scd4x" and pm.driver == "pmsa003i"
    assert (co2.self_calibration, co2.altitude_m, co2.ambient_pressure_hpa) == (False, 520, None)
    assert co2.temperature_offset_c == 3.0 and co2.stuck_polls == 0
    assert (pm.address, pm.interval, pm.warmup_s, pm.stuck_polls) == (0x12, 10.0, 30.0, 10)
    assert co2.bus_key() == pm.bus_key() == "i2c:/dev/i2c-1"  # one bus, one bus task
