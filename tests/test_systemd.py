"""The systemd units in systemd/: `systemd-analyze verify` accepts them, and they keep the decisions
that matter on a roof Pi (restart forever, buffer in the state directory, hardware reachable).

`systemd-analyze verify` needs no running systemd (this also runs in containers), but it fails when
the ExecStart binary does not exist, so each unit is verified as a copy whose ExecStart points at
this checkout's own `gateway` console script. It exits 0 on unknown keys or unparsable values and
only warns, so the test also fails on any stderr line about the unit file; lines about the host
(missing /run/systemd, other units) are ignored. `test_verify_reports_a_broken_unit` proves that
filter matches this systemd version's output format, so a silent pass means a clean unit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import DRAIN_TIMEOUT
from gateway.config import BufferConfig

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")
INSTALLED_GATEWAY = "/opt/canary-gateway/venv/bin/gateway"
CONFIG = "/etc/canary-gateway/gateway.toml"
STATE_DIR = Path("/var/lib/canary-gateway")

#: unit file name -> the `gateway` subcommand it runs.
UNITS = {"gateway.service": "run", "gateway-bridge.service": "bridge"}

Directives = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Directives:
    """Section -> [(key, value), ...] in file order; repeated keys (After=, ...) are all kept."""
    sections: Directives = {}
    current: list[tuple[str, str]] | None = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"not a unit-file line: {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Directives, section: str, key: str) -> list[str]:
    """Every value of ``key`` in ``section``, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Directives, section: str, key: str) -> str | None:
    """The effective (last) value of a single-valued directive, or None if absent."""
    found = values(unit, section, key)
    return found[-1] if found else None


def words(unit: Directives, section: str, key: str) -> set[str]:
    """The union of a list-valued directive (After=, SupplementaryGroups=, ...)."""
    return {w for v in values(unit, section, key) for w in v.split()}


def seconds(text: str) -> float:
    """A systemd time span in the forms these units use: ``30``, ``30s``, ``2min``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", text)
    assert match, f"unexpected time span {text!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def local_gateway_executable() -> str:
    """This checkout's `gateway` console script, which exists wherever the tests run."""
    bin_dir = Path(sys.executable).parent
    found = shutil.which("gateway", path=str(bin_dir))
    if found is None:
        pytest.fail(
            f"no `gateway` console script in {bin_dir}; install the project into the venv that "
            "runs the tests: `.venv/bin/pip install -e '.[dev]'`"
        )
    return found


def systemd_analyze() -> Path:
    """The binary, or a failed test (not a skip: the units would go unchecked)."""
    if not SYSTEMD_ANALYZE.is_file():
        pytest.fail(
            f"{SYSTEMD_ANALYZE} is missing; install it with `apt-get install systemd` "
            "(Debian's systemd package; no running systemd is needed)"
        )
    return SYSTEMD_ANALYZE


def verify(unit_path: Path) -> tuple[int, list[str], str]:
    """Run `systemd-analyze verify`; return exit code, stderr lines about this unit, all output."""
    result = subprocess.run(
        [str(systemd_analyze()), "verify", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    about_unit = [line for line in result.stderr.splitlines() if unit_path.name in line]
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.returncode, about_unit, output


def installable_copy(name: str, tmp_path: Path, extra_service_line: str = "") -> Path:
    """The unit under its own name in tmp_path, ExecStart pointing at a real executable."""
    text = (UNIT_DIR / name).read_text(encoding="utf-8")
    assert text.count(INSTALLED_GATEWAY) == 1, (
        f"{name}: expected one ExecStart on {INSTALLED_GATEWAY}"
    )
    text = text.replace(INSTALLED_GATEWAY, local_gateway_executable())
    if extra_service_line:
        text = text.replace("[Service]\n", f"[Service]\n{extra_service_line}\n", 1)
    copy = tmp_path / name
    copy.write_text(text, encoding="utf-8")
    return copy


def load(name: str) -> Directives:
    return parse_unit((UNIT_DIR / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_analyze_verify_accepts_unit(name: str, tmp_path: Path) -> None:
    code, about_unit, output = verify(installable_copy(name, tmp_path))
    assert code == 0, f"systemd-analyze verify failed for {name}:\n{output}"
    assert not about_unit, f"systemd-analyze warns about {name}:\n" + "\n".join(about_unit)


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The warning filter above matches what this systemd-analyze prints (else it proves nothing)."""
    broken = installable_copy("gateway.service", tmp_path, extra_service_line="CanaryBogusKey=1")
    code, about_unit, output = verify(broken)
    assert code == 0, output  # unknown keys are warnings, which is why the filter exists
    assert any("CanaryBogusKey" in line for line in about_unit), output


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_the_installed_daemon_and_restarts_forever(name: str) -> None:
    unit = load(name)
    assert values(unit, "Service", "ExecStart") == [
        f"{INSTALLED_GATEWAY} {UNITS[name]} --config {CONFIG}"
    ]
    assert value(unit, "Service", "Type") in {"simple", "exec"}
    assert value(unit, "Service", "Restart") == "always"
    restart_sec = value(unit, "Service", "RestartSec")
    assert restart_sec is not None and 1 <= seconds(restart_sec) <= 60
    # StartLimit*= belongs in [Unit]; 0 means systemd never stops restarting the service.
    assert value(unit, "Unit", "StartLimitIntervalSec") == "0"
    assert not values(unit, "Service", "StartLimitIntervalSec")
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_stops_gracefully_and_keeps_secrets_out_of_the_config(name: str) -> None:
    unit = load(name)
    assert value(unit, "Service", "KillSignal") == "SIGTERM"
    timeout = value(unit, "Service", "TimeoutStopSec")
    assert timeout is not None and seconds(timeout) >= DRAIN_TIMEOUT + 10, (
        f"TimeoutStopSec={timeout} leaves no room for the {DRAIN_TIMEOUT} s drain on stop"
    )
    assert values(unit, "Service", "EnvironmentFile") == ["-/etc/canary-gateway/environment"]
    assert value(unit, "Service", "ConfigurationDirectory") == "canary-gateway"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_hardened(name: str) -> None:
    unit = load(name)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "User": "canary",
    }
    actual = {key: value(unit, "Service", key) for key in expected}
    assert actual == expected


def test_gateway_buffers_in_its_state_directory() -> None:
    unit = load("gateway.service")
    assert value(unit, "Service", "StateDirectory") == "canary-gateway"
    # The buffer's default path (and the example config's) is the directory systemd makes writable.
    assert BufferConfig().path.parent == STATE_DIR
    assert f'path = "{STATE_DIR}/buffer.sqlite3"' in (ROOT / "config/example.toml").read_text(
        encoding="utf-8"
    )


def test_gateway_reaches_serial_i2c_and_gpio_devices() -> None:
    unit = load("gateway.service")
    assert {"dialout", "i2c", "gpio"} <= words(unit, "Service", "SupplementaryGroups")
    # PrivateDevices=, a device allow-list, or ProtectClock= (implies DeviceAllow=char-rtc and so
    # switches the allow-list on) would hide /dev/ttyUSB*, /dev/i2c-* and the GPIO chips.
    assert value(unit, "Service", "PrivateDevices") in {None, "no"}
    assert not values(unit, "Service", "DeviceAllow")
    assert value(unit, "Service", "DevicePolicy") in {None, "auto"}
    assert value(unit, "Service", "ProtectClock") in {None, "no"}


def test_gateway_starts_without_network_or_clock_sync() -> None:
    """A Pi has no RTC: readings are buffered from boot, not after NTP or the uplink came up."""
    unit = load("gateway.service")
    dependencies = set()
    for key in ("After", "Wants", "Requires", "Requisite", "BindsTo"):
        dependencies |= words(unit, "Unit", key)
    assert not dependencies & {"time-sync.target", "network-online.target"}


def test_bridge_touches_no_hardware() -> None:
    unit = load("gateway-bridge.service")
    assert not values(unit, "Service", "SupplementaryGroups")
    assert value(unit, "Service", "PrivateDevices") == "yes"
