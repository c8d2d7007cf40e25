"""The pieces of `gateway check` below the golden cases: the unit's facts, permissions from mode
bits, the environment file, certificate dates, sizes."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from gateway.preflight import unit
from gateway.preflight.host import (
    READ,
    SEARCH,
    WRITE,
    Identity,
    allows,
    daemon_host,
    parse_environment,
)
from gateway.preflight.problem import Problem, size
from gateway.preflight.x509 import pem_certificates, validity

ROOT = Path(__file__).resolve().parents[2]


def _unit_values(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_the_unit_facts_match_systemd_gateway_service() -> None:
    service = _unit_values("gateway.service")
    assert service["User"] == [unit.USER]
    assert service["SupplementaryGroups"] == [" ".join(unit.SUPPLEMENTARY_GROUPS)]
    assert service["StateDirectory"] == ["canary-gateway"]
    assert str(unit.STATE_DIRECTORY) == "/var/lib/canary-gateway"
    assert service["WorkingDirectory"] == ["%S/canary-gateway"]  # %S = /var/lib
    assert service["EnvironmentFile"] == [f"-{unit.ENVIRONMENT_FILE}"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["yes"]
    assert service["PrivateTmp"] == ["yes"]
    assert "ReadWritePaths" not in service  # else the sandbox checks would have to know them
    # RuntimeDirectory= is being added to the unit (issue 8); the checks assume this name.
    assert service.get("RuntimeDirectory", ["canary-gateway"]) == ["canary-gateway"]
    assert str(unit.RUNTIME_DIRECTORY) == "/run/canary-gateway"


def _stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_permissions_follow_the_kernels_rules() -> None:
    canary = Identity(name="canary", uid=990, gids=frozenset({990, 20}))
    file = stat.S_IFREG
    assert allows(_stat(file | 0o640, 0, 990), canary, READ)
    assert not allows(_stat(file | 0o640, 0, 990), canary, WRITE)
    assert not allows(_stat(file | 0o600, 0, 0), canary, READ)
    assert allows(_stat(file | 0o604, 0, 0), canary, READ)  # others' bits
    # The owner's bits apply to the owner even when the group's would allow more.
    assert not allows(_stat(file | 0o060, 990, 20), canary, READ)
    # Group bits apply to members only; a member gets the group's bits, not the others'.
    assert not allows(_stat(file | 0o606, 0, 20), canary, READ)
    assert allows(_stat(stat.S_IFDIR | 0o711, 0, 0), canary, SEARCH)
    root = Identity(name="root", uid=0, gids=frozenset({0}))
    assert allows(_stat(file | 0o000, 5, 5), root, READ | WRITE)


def test_the_environment_file_is_read_as_systemd_reads_simple_files() -> None:
    text = (
        "# secrets\n; old\n\nCANARY_MQTT_PASSWORD=\"s3 cret\"\nTOKEN='a=b'\n  PLAIN = x \nnoise\n"
    )
    assert parse_environment(text) == {
        "CANARY_MQTT_PASSWORD": "s3 cret",
        "TOKEN": "a=b",
        "PLAIN": "x",
    }


def test_outside_the_unit_the_host_is_this_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    host = daemon_host(sandboxed=False, environ={"A": "1"})
    assert host.environ == {"A": "1"} and not host.sandboxed
    assert host.identity.uid == os.geteuid()
    assert host.absolute("data/../buffer.sqlite3") == PurePosixPath(tmp_path / "buffer.sqlite3")
    sandboxed = daemon_host(sandboxed=True, environ={"A": "1"})
    assert sandboxed.absolute("buffer.sqlite3") == unit.STATE_DIRECTORY / "buffer.sqlite3"
    assert str(unit.ENVIRONMENT_FILE) in sandboxed.environment_note


def test_unit_paths() -> None:
    assert unit.is_under(PurePosixPath("/var/lib/canary-gateway/x"), unit.STATE_DIRECTORY)
    assert not unit.is_under(PurePosixPath("/var/lib/canary-gateway-old/x"), unit.STATE_DIRECTORY)
    assert unit.hidden(PurePosixPath("/home/pi/x")) and unit.hidden(PurePosixPath("/root"))
    assert not unit.hidden(PurePosixPath("/homework"))


def _certificate(tmp_path: Path, start: str, end: str) -> bytes:
    """A self-signed certificate with fixed dates, made by `openssl ca` (its own DER writer)."""
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "serial").write_text("01\n")
    (tmp_path / "ca.cnf").write_text(
        "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n"
        "[req]\ndistinguished_name = dn\n[dn]\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k")
    openssl("req", "-new", "-key", "k", "-subj", "/CN=t", "-config", "ca.cnf", "-out", "r")
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "k", "-in", "r",
            "-startdate", start, "-enddate", end, "-notext", "-out", "c")  # fmt: skip
    return (tmp_path / "c").read_bytes()


def test_certificate_dates_in_both_time_forms(tmp_path: Path) -> None:
    """UTCTime before 2050, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5)."""
    pem = _certificate(tmp_path, "19991231235959Z", "20600102030405Z")
    [der] = pem_certificates(b"junk before\n" + pem + b"junk after\n")
    dates = validity(der)
    assert dates.not_before == datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert dates.not_after == datetime(2060, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert len(pem_certificates(pem + pem)) == 2
    with pytest.raises(ValueError):
        validity(b"\x30\x03\x02\x01\x01")
    with pytest.raises(ValueError):
        validity(der[:40])


def test_problem_line_and_sizes() -> None:
    assert Problem("a.b", "expected x", "y").line("f.toml") == "f.toml: a.b: expected x (got y)"
    assert Problem("a.b", "expected x").line("f.toml") == "f.toml: a.b: expected x"
    assert [size(n) for n in (800, 1536, 64 * 1024**2, 2 * 1024**3, 10**15)] == [
        "800 B",
        "1.5 KiB",
        "64 MiB",
        "2 GiB",
        "909 TiB",
    ]


def test_what_this_process_cannot_inspect_is_a_problem_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run by a user who may not look into a directory (no sudo), the check says so."""
    from gateway.config import BufferConfig  # noqa: PLC0415
    from gateway.preflight.host import Host  # noqa: PLC0415
    from gateway.preflight.storage import check_buffer  # noqa: PLC0415

    (tmp_path / "var" / "lib" / "canary-gateway").mkdir(parents=True)
    real_stat = os.stat

    def stat_denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if "canary-gateway" in str(path):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("gateway.preflight.host.os.stat", stat_denied)
    monkeypatch.setattr("pathlib.os.stat", stat_denied, raising=False)
    host = Host(
        identity=Identity(name="pi", uid=1000, gids=frozenset({1000})),
        environ={},
        now=datetime(2026, 6, 1, tzinfo=UTC),
        sandboxed=False,
        cwd=PurePosixPath("/"),
        root=tmp_path,
    )
    path = PurePosixPath("/var/lib/canary-gateway/sub/buffer.sqlite3")
    assert host.denied(path.parent.parent, WRITE) == (
        "cannot be inspected by this user (Permission denied; run gateway check with sudo)"
    )
    problems = check_buffer(host, BufferConfig(path=Path(path)))
    assert [p.key for p in problems] == ["buffer.path"]
    assert "gateway check can inspect (run it with sudo)" in problems[0].expected
