"""Builds the machine a `gateway check` golden case describes, under a fake root.

A case is ``tests/cases/check/<name>/`` with ``gateway.toml`` (the configuration, with the
absolute paths the daemon would use), ``error.txt`` (the expected output: one
``config error: {file}: key: ...`` line per problem, or nothing) and optionally ``case.toml``,
which describes the host. Its keys, all optional:

```toml
sandboxed = true            # under the unit (gateway check) or not (gateway check --simulate)
now = 2026-06-01T12:00:00Z  # the time the check runs at (the default)
free = 100_000_000_000      # bytes free on the buffer's file system
read_only = false           # that file system is mounted read-only
identity = { user = "canary", uid = 990, gids = [990] }   # who the daemon runs as
groups = { 990 = "canary" } # names for gids that are not in this machine's /etc/group
env = { NAME = "value" }    # the daemon's environment

[[files]]                   # a regular file (or, with dir = true, a directory)
path = "/etc/canary-gateway/mqtt-password"
text = "secret"             # default "secret\n"
mode = 0o640                # default 0o644 (0o755 for a directory)
uid = 0                     # default 0
gid = 990                   # default 0

[[nodes]]                   # a device node: type "char" (mknod 1:3, /dev/null's numbers) or "fifo"
path = "/dev/ttyUSB0"
type = "char"
mode = 0o660
gid = 20

[[pki]]                     # a CA, and a certificate signed by it, with fixed dates (openssl ca)
ca = "/etc/canary-gateway/ca.pem"
ca_dates = ["20200101000000Z", "20990101000000Z"]
cert = "/etc/canary-gateway/client.crt"     # optional, with key
key = "/etc/canary-gateway/client.key"
cert_dates = ["20200101000000Z", "20990101000000Z"]
key_kind = "match"          # or "other" (a key of another pair) or "encrypted"
```

Parent directories are made 0755 root:root. Files are owned by the given numeric ids, which
need no user or group on this machine: the `Identity` is injected, and permissions are judged
from the bits. Building a case needs root (chown, mknod), which is how the suite runs here.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from gateway.preflight import unit
from gateway.preflight.host import Disk, Host, Identity

#: Used when a case says nothing: a 100 GB card, and a fixed time (messages show it).
DEFAULT_FREE = 100_000_000_000
DEFAULT_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _place(root: Path, path: str) -> Path:
    target = root / PurePosixPath(path).relative_to("/")
    for parent in reversed(target.relative_to(root).parents[:-1]):
        directory = root / parent
        if not directory.exists():
            directory.mkdir()
            os.chmod(directory, 0o755)
    return target


def _own(target: Path, spec: dict[str, Any], mode: int) -> None:
    os.chown(target, spec.get("uid", 0), spec.get("gid", 0), follow_symlinks=False)
    os.chmod(target, spec.get("mode", mode))


def _openssl(workdir: Path, *args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=workdir, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


_CA_CONF = """\
[ca]
default_ca = c
[c]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[leaf]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = clientAuth
"""


def _issue(workdir: Path, name: str, dates: list[str], *, ca: bool) -> tuple[Path, Path]:
    """``name.crt`` and ``name.key`` with fixed dates: the CA self-signed, a leaf signed by it."""
    key, csr, crt = (workdir / f"{name}.{s}" for s in ("key", "csr", "crt"))
    _openssl(
        workdir,
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.name,
    )
    _openssl(
        workdir,
        "req",
        "-new",
        "-key",
        key.name,
        "-subj",
        f"/CN={name}",
        "-config",
        "ca.cnf",
        "-out",
        csr.name,
    )
    signer = (
        ["-selfsign", "-keyfile", key.name] if ca else ["-cert", "ca.crt", "-keyfile", "ca.key"]
    )
    _openssl(
        workdir,
        "ca", "-batch", "-config", "ca.cnf", *signer, "-in", csr.name,
        "-startdate", dates[0], "-enddate", dates[1],
        "-extensions", "v3_ca" if ca else "leaf", "-notext", "-out", crt.name,
    )  # fmt: skip
    return crt, key


def _pki(root: Path, spec: dict[str, Any], workdir: Path) -> None:
    workdir.mkdir()
    (workdir / "ca.cnf").write_text(_CA_CONF)
    (workdir / "index.txt").write_text("")
    (workdir / "serial").write_text("01\n")
    ca_crt, _ = _issue(
        workdir, "ca", spec.get("ca_dates", ["20200101000000Z", "20990101000000Z"]), ca=True
    )
    _place(root, spec["ca"]).write_bytes(ca_crt.read_bytes())
    if "cert" not in spec:
        return
    crt, key = _issue(
        workdir, "client", spec.get("cert_dates", ["20200101000000Z", "20990101000000Z"]), ca=False
    )
    _place(root, spec["cert"]).write_bytes(crt.read_bytes())
    kind = spec.get("key_kind", "match")
    if kind == "other":
        _, key = _issue(workdir, "other", ["20200101000000Z", "20990101000000Z"], ca=False)
    elif kind == "encrypted":
        _openssl(
            workdir, "pkey", "-in", key.name, "-aes256", "-passout", "pass:x", "-out", "enc.key"
        )
        key = workdir / "enc.key"
    _place(root, spec["key"]).write_bytes(key.read_bytes())


def build_host(case: Path, root: Path) -> Host:
    """Lay out ``case``'s ``case.toml`` under ``root`` and return the `Host` it describes."""
    spec: dict[str, Any] = {}
    if (case / "case.toml").exists():
        spec = tomllib.loads((case / "case.toml").read_text())
    root.mkdir()
    for n, pki in enumerate(spec.get("pki", [])):
        _pki(root, pki, root.parent / f"pki-{n}")
    for entry in spec.get("files", []):
        target = _place(root, entry["path"])
        if entry.get("dir", False):
            target.mkdir(exist_ok=True)
            _own(target, entry, 0o755)
        else:
            if "text" in entry or not target.exists():
                target.write_text(entry.get("text", "secret\n"))
            _own(target, entry, 0o644)
    for entry in spec.get("nodes", []):
        target = _place(root, entry["path"])
        if entry.get("type", "char") == "char":
            os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        else:
            os.mkfifo(target)
        _own(target, entry, 0o660)
    who = spec.get("identity", {"user": "canary", "uid": 990, "gids": [990]})
    identity = Identity(name=who["user"], uid=who["uid"], gids=frozenset(who["gids"]))
    groups = {int(gid): name for gid, name in spec.get("groups", {"990": "canary"}).items()}
    users = {identity.uid: identity.name}
    disk = Disk(free=spec.get("free", DEFAULT_FREE), read_only=spec.get("read_only", False))
    sandboxed = spec.get("sandboxed", True)

    def group_name(gid: int) -> str:
        if gid in groups:
            return groups[gid]
        import grp  # noqa: PLC0415

        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)

    return Host(
        identity=identity,
        environ=spec.get("env", {}),
        now=spec.get("now", DEFAULT_NOW),
        sandboxed=sandboxed,
        cwd=unit.WORKING_DIRECTORY if sandboxed else PurePosixPath("/home/installer"),
        root=root,
        environment_note=str(unit.ENVIRONMENT_FILE) if sandboxed else "this shell's environment",
        user_name=lambda uid: users.get(uid, "root" if uid == 0 else str(uid)),
        group_name=group_name,
        disk=lambda _path: disk,
    )
