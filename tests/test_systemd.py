"""The systemd units in systemd/: `systemd-analyze verify` accepts them, `systemd-analyze security`
rates their exposure at most 2.0, and they keep the decisions that matter on a roof Pi (notify and
watchdog, restart forever, buffer in the state directory, hardware reachable through the device
allow-list).

`systemd-analyze verify` needs no running systemd (this also runs in containers), but it fails when
the ExecStart binary does not exist, so each unit is verified as a copy whose ExecStart points at
this checkout's own `gateway` console script. It exits 0 on unknown keys or unparsable values and
only warns, so the test also fails on any stderr line about the unit file; lines about the host
(missing /run/systemd, other units) are ignored. `test_verify_reports_a_broken_unit` proves that
filter matches this systemd version's output format, so a silent pass means a clean unit.
`test_security_rates_a_weak_unit_above_the_limit` does the same for the exposure check.
tests/packaging/test_deb.py runs both on the units as the Debian package installs them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
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
#: The highest `systemd-analyze security` exposure either unit may have (issue 8).
MAX_EXPOSURE = 2.0
#: Kernel device groups (/proc/devices names) the gateway must reach, as the drivers register
#: them: 8250 (the Pi's mini UART), PL011 (Pi 1-5, RP1), usb-serial, cdc-acm, SC16IS7xx HATs,
#: i2c-dev, gpiolib's character devices, bcm2835-gpiomem / rpi-gpiomem (Pi 4 and Pi 5), spidev.
GATEWAY_DEVICE_GROUPS = (
    "ttyS",
    "ttyAMA",
    "ttyUSB",
    "ttyACM",
    "ttySC",
    "i2c",
    "gpiochip",
    "bcm2835-gpiomem",
    "gpiomem",
    "gpiomem0",
    "spi",
)
#: Device groups the gateway must never reach: RAM, the SD card and disks, the kernel log.
GATEWAY_FORBIDDEN_GROUPS = ("mem", "mmc", "sd", "loop", "kmsg", "misc", "input", "vcs")
#: Device nodes a Pi gateway opens; those present on this host are checked against the allow-list.
DEVICE_NODE_GLOBS = (
    "ttyS*",
    "ttyAMA*",
    "ttyUSB*",
    "ttyACM*",
    "ttySC*",
    "i2c-*",
    "gpiochip*",
    "gpiomem*",
    "spidev*",
)
#: Modules whose device groups must exist before the allow-list is resolved at start.
GATEWAY_MODULES = ("usbserial", "cdc_acm", "i2c_dev", "spidev")

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


def exposure(unit_path: Path) -> tuple[float, int, str]:
    """`systemd-analyze security --offline=yes` of a unit file: overall exposure, exit code with
    ``--threshold`` at MAX_EXPOSURE, and the whole output for a failure message."""
    result = subprocess.run(
        [
            str(systemd_analyze()),
            "security",
            "--offline=yes",
            f"--threshold={round(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(unit_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    match = re.search(
        rf"Overall exposure level for {re.escape(unit_path.name)}: (\d+\.\d)", result.stdout
    )
    assert match, f"no overall exposure in the output:\n{output}"
    return float(match[1]), result.returncode, output


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
def test_unit_exposure_is_at_most_two(name: str, tmp_path: Path) -> None:
    level, code, output = exposure(installable_copy(name, tmp_path))
    assert level <= MAX_EXPOSURE, f"{name}: exposure {level} > {MAX_EXPOSURE}:\n{output}"
    assert code == 0, output


def test_security_rates_a_weak_unit_above_the_limit(tmp_path: Path) -> None:
    """The exposure check can fail: the gateway unit without its hardening block rates above 2.0
    (else the threshold and the parsing above would prove nothing)."""
    text = (UNIT_DIR / "gateway.service").read_text(encoding="utf-8")
    head, marker, _hardening = text.partition("# --- Hardening")
    assert marker, "gateway.service lost its hardening section marker"
    weak = tmp_path / "gateway.service"
    weak.write_text(
        head.replace(INSTALLED_GATEWAY, local_gateway_executable()) + "\n[Install]\n"
        "WantedBy=multi-user.target\n",
        encoding="utf-8",
    )
    level, code, output = exposure(weak)
    assert level > MAX_EXPOSURE, output
    assert code != 0, output


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_runs_the_installed_daemon_and_restarts_forever(name: str) -> None:
    unit = load(name)
    assert values(unit, "Service", "ExecStart") == [
        f"{INSTALLED_GATEWAY} {UNITS[name]} --config {CONFIG}"
    ]
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "Restart") == "always"
    restart_sec = value(unit, "Service", "RestartSec")
    assert restart_sec is not None and 1 <= seconds(restart_sec) <= 60
    # StartLimit*= belongs in [Unit]; 0 means systemd never stops restarting the service.
    assert value(unit, "Unit", "StartLimitIntervalSec") == "0"
    assert not values(unit, "Service", "StartLimitIntervalSec")
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_is_watched_and_may_start_slowly(name: str) -> None:
    """sd_notify: only the main process may report READY=1 and WATCHDOG=1; 60 s without a ping
    is a hang; opening a large buffer (quick_check on a slow card) may take minutes."""
    unit = load(name)
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert value(unit, "Service", "WatchdogSec") == "60"
    start = value(unit, "Service", "TimeoutStartSec")
    assert start is not None and seconds(start) == 300


def test_gateway_reloads_on_sighup_and_the_bridge_does_not() -> None:
    gateway = load("gateway.service")
    assert values(gateway, "Service", "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert not values(load("gateway-bridge.service"), "Service", "ExecReload")


def test_gateway_owns_the_runtime_directory() -> None:
    """/run/canary-gateway holds the status socket and the panels' PNG files. Only the gateway
    declares it: systemd deletes a RuntimeDirectory= when its unit stops, so a second unit
    naming it would remove the gateway's socket whenever that unit stopped."""
    gateway = load("gateway.service")
    assert value(gateway, "Service", "RuntimeDirectory") == "canary-gateway"
    assert value(gateway, "Service", "RuntimeDirectoryMode") == "0750"
    assert "canary-gateway" not in words(
        load("gateway-bridge.service"), "Service", "RuntimeDirectory"
    )
    # lgpio keeps its FIFOs in (and chdir()s to) LG_WD: the runtime directory, not the state one.
    assert "LG_WD=%t/canary-gateway" in words(gateway, "Service", "Environment")


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


def allowed_device_groups(unit: Directives) -> list[tuple[str, str]]:
    """The unit's ``char-`` DeviceAllow= patterns with their access, e.g. ("tty*", "rw")."""
    allowed = []
    for entry in values(unit, "Service", "DeviceAllow"):
        spec, _, access = entry.partition(" ")
        assert spec.startswith("char-"), f"only device groups, no node paths: {entry!r}"
        allowed.append((spec.removeprefix("char-"), access))
    return allowed


def group_allowed(unit: Directives, group: str) -> bool:
    """Whether systemd's glob match of DeviceAllow=char-PATTERN admits /proc/devices ``group``
    for reading and writing."""
    return any(
        fnmatch.fnmatchcase(group, pattern) and set("rw") <= set(access)
        for pattern, access in allowed_device_groups(unit)
    )


def test_gateway_reaches_serial_i2c_gpio_and_spi_devices() -> None:
    unit = load("gateway.service")
    assert {"dialout", "i2c", "gpio", "spi"} <= words(unit, "Service", "SupplementaryGroups")
    # PrivateDevices= would hide every real device; the allow-list admits the hardware's groups.
    assert value(unit, "Service", "PrivateDevices") in {None, "no"}
    assert value(unit, "Service", "DevicePolicy") == "closed"
    missing = [g for g in GATEWAY_DEVICE_GROUPS if not group_allowed(unit, g)]
    assert not missing, f"DeviceAllow= does not admit the device groups {missing}"
    # A user namespace would map the hardware groups to nobody (see the unit's comment).
    assert value(unit, "Service", "PrivateUsers") in {None, "no"}


def test_gateway_device_allow_list_refuses_everything_else() -> None:
    unit = load("gateway.service")
    admitted = [g for g in GATEWAY_FORBIDDEN_GROUPS if group_allowed(unit, g)]
    assert not admitted, f"DeviceAllow= admits {admitted}"
    assert not any(entry.startswith("block-") for entry in values(unit, "Service", "DeviceAllow"))


def test_gateway_loads_the_modules_of_its_device_groups_first() -> None:
    """The allow-list is resolved from /proc/devices at start: a group whose module loads later
    (an adapter's usbserial) would stay locked out, so the unit loads those modules before."""
    unit = load("gateway.service")
    instances = {f"modprobe@{module}.service" for module in GATEWAY_MODULES}
    assert instances <= words(unit, "Unit", "Wants")
    assert instances <= words(unit, "Unit", "After")


def proc_devices() -> dict[int, set[str]]:
    """/proc/devices' character section: major -> group names (majors may be shared)."""
    groups: dict[int, set[str]] = {}
    text = Path("/proc/devices").read_text(encoding="utf-8")
    for line in text.split("Block devices:")[0].splitlines()[1:]:
        major, _, name = line.strip().partition(" ")
        if major.isdigit():
            groups.setdefault(int(major), set()).add(name)
    return groups


def test_gateway_allow_list_admits_this_hosts_device_nodes() -> None:
    """Every serial, I2C, GPIO and SPI node on this host is admitted by its major's group name, as
    systemd resolves it; on a Pi this covers the real adapters and buses, in CI at least ttyS*."""
    unit = load("gateway.service")
    groups = proc_devices()
    nodes = sorted({p for g in DEVICE_NODE_GLOBS for p in Path("/dev").glob(g)})
    checked = 0
    for node in nodes:
        info = node.stat()
        if not stat.S_ISCHR(info.st_mode):
            continue
        names = groups.get(os.major(info.st_rdev), set())
        assert any(group_allowed(unit, n) for n in names), (
            f"{node} (major {os.major(info.st_rdev)}, groups {sorted(names)}) is not admitted"
        )
        checked += 1
    if checked == 0 and os.environ.get("CI"):
        pytest.fail("no serial, I2C, GPIO or SPI device node on this CI host to check")


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
    assert value(unit, "Service", "PrivateUsers") == "yes"
