"""The Debian package on this machine: install, check, upgrade, remove, purge (issue 8, acceptance 1).

The package is the one `packaging/deb/build` made for this checkout (scripts/test builds it before
pytest runs: dist/canary-gateway_<version>-1_<arch>.deb). This test installs it with apt as an
installer would, checks what the installation must give (the console script, a starter
configuration that `gateway check` passes, the canary user and groups, the state directory, units
that `systemd-analyze verify` accepts with an exposure of at most 2.0, a venv without staging
paths), writes a buffer with pending readings as the service user, upgrades to a higher version
(the same tree repacked with revision 2: no second venv build), removes and purges, and proves at
each step what must survive: the buffer file and its pending count on upgrade and removal, a
modified conffile and the administrator's `systemctl enable` on upgrade; and what purge takes
away. It needs root, dpkg and apt: it fails in CI (CI set) when it cannot run, and skips only for a
developer who is not root. Whatever happens, the machine is left as it was found (purge, then the
user and groups the package created).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from tests.test_systemd import MAX_EXPOSURE, exposure, verify

pytestmark = pytest.mark.deb

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "canary-gateway"
PREFIX = Path("/opt/canary-gateway")
VENV = PREFIX / "venv"
STATE = Path("/var/lib/canary-gateway")
ETC = Path("/etc/canary-gateway")
CONFFILE = ETC / "gateway.toml"
UNIT_DIR = Path("/lib/systemd/system")
UNITS = ("gateway.service", "gateway-bridge.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/gateway.service")
USER = "canary"
HARDWARE_GROUPS = ("dialout", "i2c", "gpio", "spi")
#: The environment of every command: the installed venv must run on its own, so nothing of the
#: test's interpreter (PYTHONPATH pointing at this checkout, a venv) may leak into it.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"},
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
}
#: Pending readings written into the buffer before the upgrade.
READINGS = 100

WRITE_BUFFER = f"""
from datetime import UTC, datetime
from pathlib import Path

from gateway.buffer import SqliteBuffer
from gateway.model import Reading

buffer = SqliteBuffer(Path("{STATE}/buffer.sqlite3"))
ts = datetime.now(UTC).replace(microsecond=0)
buffer.append(
    [Reading(device="main-meter", metric="power", value=float(seq), unit="W", ts=ts, seq=seq)
     for seq in range(1, {READINGS} + 1)]
)
buffer.finish({READINGS})
print(buffer.pending())
buffer.close()
"""

#: Every RECORD entry with a hash matches its file (the build rewrites shebangs and re-hashes).
CHECK_RECORDS = """
import base64, csv, hashlib, sys
from pathlib import Path

site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
bad, checked = [], 0
for record in site.glob("*.dist-info/RECORD"):
    for row in csv.reader(record.read_text().splitlines()):
        if len(row) < 2 or not row[1]:
            continue
        algorithm, _, expected = row[1].partition("=")
        data = (site / row[0]).read_bytes()
        actual = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=")
        checked += 1
        if actual.decode() != expected:
            bad.append(row[0])
print(checked)
sys.exit(f"RECORD hashes do not match: {bad}" if bad else 0)
"""


def run(
    *argv: str | Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (``check``) the assertion shows its whole output."""
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=ENV,
        cwd="/",  # not the checkout, which `python -c` would put first on sys.path
    )
    if check:
        assert result.returncode == 0, describe(argv, result)
    return result


def describe(argv: tuple[str | Path, ...], result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{' '.join(map(str, argv))}: exit {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def apt(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """apt-get as an installer runs it; recommends (i2c-tools) are not fetched: no network here."""
    return run(
        "apt-get",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=120",
        *argv,
    )


def package_status() -> str:
    result = run("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
    return result.stdout.strip() if result.returncode == 0 else "not-installed"


def exists(kind: str, name: str) -> bool:
    return run("getent", kind, name, check=False).returncode == 0


def snapshot(directory: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every file of ``directory``: sha256, mode, uid, gid (and the directory itself)."""
    info = directory.stat()
    files = {".": ("", info.st_mode, info.st_uid, info.st_gid)}
    for path in sorted(directory.rglob("*")):
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        files[str(path.relative_to(directory))] = (digest, info.st_mode, info.st_uid, info.st_gid)
    return files


def pending(buffer: Path) -> int:
    """Readings in the buffer, read without writing anything (immutable: no lock, no WAL)."""
    db = sqlite3.connect(f"file:{buffer}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        db.close()


PROJECT_PACKAGES = ("gateway", "drivers", "simulators")
SOURCE_SUFFIXES = {".py", ".toml", ".json"}


def installed_sources(site: Path) -> dict[str, str]:
    """sha256 of the project's modules and package data in the installed venv."""
    found = {}
    for package in PROJECT_PACKAGES:
        for path in (site / package).rglob("*"):
            if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                found[str(path.relative_to(site))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def checkout_sources() -> dict[str, str]:
    """The same for the files git tracks in this checkout (what packaging/deb/build packs)."""
    listed = run("git", "-C", ROOT, "ls-files", "--", *PROJECT_PACKAGES).stdout.split()
    return {
        name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
        for name in listed
        if Path(name).suffix in SOURCE_SUFFIXES
    }


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the Debian package test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def deb() -> Path:
    """The package built for this checkout, on a machine where the test may install it."""
    if sys.platform != "linux" or shutil.which("dpkg") is None or shutil.which("apt-get") is None:
        cannot_run("needs a Debian system with dpkg and apt-get")
    if os.geteuid() != 0:
        cannot_run("installs a Debian package: run as root (CI does)")
    arch = run("dpkg", "--print-architecture").stdout.strip()
    path = ROOT / "dist" / f"{PACKAGE}_{__version__}-1_{arch}.deb"
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with packaging/deb/build (scripts/test does)")
    return path


@pytest.fixture
def clean_machine() -> Iterator[None]:
    """No installation of the package before; and none, nor what it created, after."""
    status = package_status()
    leftovers = [p for p in (STATE, ETC, PREFIX) if p.exists()]
    if status != "not-installed" or leftovers:
        if not os.environ.get("CI"):
            pytest.fail(
                f"{PACKAGE} is on this machine ({status}; {leftovers}): the test would purge it "
                f"and its buffer. Remove it first (apt-get purge {PACKAGE})."
            )
        run("apt-get", "purge", "-y", "-q", PACKAGE, check=False)  # a crashed earlier CI run
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    had_user = exists("passwd", USER)
    had_groups = {g for g in (USER, *HARDWARE_GROUPS) if exists("group", g)}
    try:
        yield
    finally:
        if package_status() != "not-installed":
            run(
                "apt-get",
                "purge",
                "-y",
                "-q",
                "-o",
                "DPkg::Lock::Timeout=120",
                PACKAGE,
                check=False,
            )
        for path in (STATE, ETC):
            shutil.rmtree(path, ignore_errors=True)
        WANTS.unlink(missing_ok=True)
        if not had_user and exists("passwd", USER):
            run("userdel", USER, check=False)
        for group in (USER, *HARDWARE_GROUPS):
            if group not in had_groups and exists("group", group):
                run("groupdel", group, check=False)


def repack(deb: Path, workdir: Path, revision: int) -> Path:
    """The same package under Debian revision ``revision``: a higher version, no new venv."""
    tree = workdir / "tree"
    run("dpkg-deb", "--raw-extract", deb, tree)
    control = tree / "DEBIAN" / "control"
    text = control.read_text(encoding="utf-8")
    old = f"\nVersion: {__version__}-1\n"
    assert old in text, text
    control.write_text(
        text.replace(old, f"\nVersion: {__version__}-{revision}\n"), encoding="utf-8"
    )
    out = workdir / f"{deb.name.replace('-1_', f'-{revision}_')}"
    run("dpkg-deb", "--build", "--root-owner-group", "-Znone", tree, out)
    shutil.rmtree(tree)
    return out


def check_installation() -> None:
    """What a fresh installation gives, before anything else runs."""
    assert package_status() == f"install ok installed {__version__}-1"
    gateway = Path("/usr/bin/gateway")
    assert gateway.resolve() == VENV / "bin" / "gateway"
    assert run(gateway, "--version").stdout.strip() == f"canary-gateway {__version__}"
    # The shipped starter configuration passes the check, as root and as the service user.
    for prefix in ((), ("runuser", "-u", USER, "--")):
        out = run(*prefix, gateway, "check", "--config", CONFFILE).stdout
        assert out.startswith(f"{CONFFILE}: ok"), out

    # The service user, its groups, its directory; nothing enabled or started.
    entry = run("getent", "passwd", USER).stdout.strip().split(":")
    assert entry[5:] == [str(STATE), "/usr/sbin/nologin"], entry
    groups = set(run("id", "-nG", USER).stdout.split())
    assert {USER, *HARDWARE_GROUPS} <= groups, groups
    info = STATE.stat()
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (
        0o750,
        int(entry[2]),
        int(entry[3]),
    )
    assert not WANTS.exists(), "the package enabled gateway.service; the installer does that"

    # The files are the checkout's: units, conffile, the project's modules and package data.
    for unit in UNITS:
        assert (UNIT_DIR / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes(), unit
    assert CONFFILE.read_bytes() == (ROOT / "config" / "gateway.toml").read_bytes()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout.split()
    assert str(CONFFILE) in conffiles, conffiles
    site = next(VENV.glob("lib/python3.*/site-packages"))
    assert installed_sources(site) == checkout_sources(), (
        "the package is not this checkout's: rebuild it with packaging/deb/build"
    )
    assert (Path("/usr/share/doc/canary-gateway/examples/example.toml")).read_bytes() == (
        ROOT / "config" / "example.toml"
    ).read_bytes()

    # The venv is at home in /opt: shebangs, pyvenv.cfg, RECORD hashes; Debian's interpreter.
    python = VENV / "bin" / "python"
    assert (VENV / "bin" / "gateway").read_text().splitlines()[0] == f"#!{python}"
    cfg = (VENV / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and "/tmp" not in cfg, cfg
    leaks = run("grep", "-rl", "canary-deb.", PREFIX, check=False)
    assert leaks.returncode == 1, f"files name the build directory:\n{leaks.stdout}"
    assert int(run(python, "-c", CHECK_RECORDS).stdout) > 1000
    assert not (site / "pip").exists(), "pip in the venv: the venv is dpkg's"

    # The metrics extra is bundled: /metrics of [local] http works on an installed gateway.
    run(python, "-c", "import prometheus_client")

    # `gateway demo` finds its site as package data; without the demo extra it says so in a line.
    demo = run(python, "-c", "from gateway.demo import DEMO_CONFIG; print(DEMO_CONFIG)").stdout
    assert demo.strip() == str(site / "gateway" / "demo.toml")
    run(gateway, "check", "--simulate", "--config", demo.strip())  # run from a shell, not the unit
    result = run(gateway, "demo", "--duration", "1", check=False)
    assert result.returncode == 1, describe(("gateway", "demo"), result)
    assert result.stderr.startswith("error: gateway demo needs the embedded broker"), result.stderr
    assert "Traceback" not in result.stderr

    # The installed units: ExecStart exists now, so they are verified as they are.
    for unit in UNITS:
        code, about_unit, output = verify(UNIT_DIR / unit)
        assert code == 0 and not about_unit, output
        level, code, output = exposure(UNIT_DIR / unit)
        assert level <= MAX_EXPOSURE and code == 0, output


def test_install_upgrade_remove_purge(deb: Path, clean_machine: None, tmp_path: Path) -> None:
    apt("install", deb)
    check_installation()

    # A buffer with pending readings, written by the service user as the daemon would.
    buffer = STATE / "buffer.sqlite3"
    out = run("runuser", "-u", USER, "--", VENV / "bin" / "python", "-c", WRITE_BUFFER).stdout
    assert int(out) == READINGS
    before = snapshot(STATE)
    assert pending(buffer) == READINGS
    # The administrator edits the configuration and enables the gateway.
    edited = CONFFILE.read_text() + "# edited on site\n"
    CONFFILE.write_text(edited)
    run("systemctl", "enable", "gateway.service")
    assert WANTS.is_symlink()

    # Upgrade: same tree, higher version.
    apt("install", repack(deb, tmp_path, revision=2))
    assert package_status() == f"install ok installed {__version__}-2"
    assert snapshot(STATE) == before, "the upgrade changed the buffer's directory"
    assert pending(buffer) == READINGS
    assert CONFFILE.read_text() == edited, "the upgrade overwrote the modified conffile"
    assert WANTS.is_symlink(), "the upgrade dropped the administrator's enable"
    assert run("/usr/bin/gateway", "--version").stdout.strip() == f"canary-gateway {__version__}"

    # Remove: the program goes, the buffer, the configuration and the user stay.
    apt("remove", PACKAGE)
    assert package_status() == f"deinstall ok config-files {__version__}-2"
    assert not VENV.exists() and not Path("/usr/bin/gateway").exists()
    assert not any((UNIT_DIR / unit).exists() for unit in UNITS)
    assert snapshot(STATE) == before, "the removal changed the buffer's directory"
    assert pending(buffer) == READINGS
    assert CONFFILE.read_text() == edited
    assert exists("passwd", USER)

    # Purge: the buffer, the configuration and the enablement go; the user stays (postrm).
    apt("purge", PACKAGE)
    assert package_status() == "not-installed"
    assert not STATE.exists(), "purge kept the buffer's directory"
    assert not ETC.exists(), "purge kept /etc/canary-gateway"
    assert not WANTS.is_symlink(), "purge kept the enablement symlink"
    assert exists("passwd", USER)
