"""A throwaway PKI and a Mosquitto that demands TLS client certificates and passwords, for tests.

Certificates are made with the ``openssl`` command (Debian's ``openssl`` package): a CA, a server
certificate for 127.0.0.1 / localhost and a client certificate, all signed by that CA and valid
for a day. The broker's password file is hashed by Mosquitto's own ``mosquitto_passwd``, so the
broker checks passwords exactly as it would on a site.
"""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ServerProcess, find_binary, free_port, port_open

#: Extensions of the three certificates (``openssl x509 -extfile`` / ``req -extensions`` syntax).
_CA_EXT = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


#: Mosquitto's own log in the server's workdir (connections, refusals, TLS errors).
BROKER_LOG = "broker.log"


@dataclass(frozen=True)
class Pki:
    """Paths of a CA certificate and of a server and a client certificate with their keys."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(command: str, *, cwd: Path, **files: Path) -> None:
    """Run ``openssl <command>``; ``{name}`` words are replaced by ``files[name]`` after splitting,
    so paths may contain spaces."""
    binary = find_binary("openssl", "/usr/bin/openssl")
    argv = [binary, *(word.format(**files) for word in command.split())]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"openssl {command} failed:\n{result.stderr}")


def _key(path: Path) -> Path:
    _openssl(
        "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {key}",
        cwd=path.parent,
        key=path,
    )
    return path


def _signed(directory: Path, name: str, *, subject: str, ext: str) -> Path:
    """``<name>.crt`` (with ``<name>.key``) for ``subject``, signed by ca.crt/ca.key in ``directory``."""
    key = _key(directory / f"{name}.key")
    csr, ext_file, cert = (directory / f"{name}.{suffix}" for suffix in ("csr", "ext", "crt"))
    ext_file.write_text(ext)
    _openssl(f"req -new -key {{key}} -subj {subject} -out {{csr}}", cwd=directory, key=key, csr=csr)
    _openssl(
        "x509 -req -in {csr} -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -sha256"
        " -extfile {ext} -out {cert}",
        cwd=directory,
        csr=csr,
        ext=ext_file,
        cert=cert,
    )
    return cert


def make_pki(directory: Path) -> Pki:
    """Create the CA, server and client certificates in ``directory`` (which must exist)."""
    _key(directory / "ca.key")
    ca_conf = directory / "ca.cnf"
    # A config file of our own, so the result does not depend on the system's openssl.cnf.
    ca_conf.write_text(f"[req]\ndistinguished_name = dn\n[dn]\n[v3_ca]\n{_CA_EXT}")
    _openssl(
        "req -x509 -new -key ca.key -subj /CN=Canary-test-CA -config {conf} -extensions v3_ca"
        " -days 1 -sha256 -out ca.crt",
        cwd=directory,
        conf=ca_conf,
    )
    server = _signed(directory, "server", subject="/CN=127.0.0.1", ext=_SERVER_EXT)
    client = _signed(directory, "client", subject="/CN=canary-gw", ext=_CLIENT_EXT)
    return Pki(
        directory / "ca.crt", server, directory / "server.key", client, directory / "client.key"
    )


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file with ``users`` (name -> password), hashed by mosquitto_passwd."""
    binary = find_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    path.write_text("")
    for user, password in users.items():
        result = subprocess.run(
            [binary, "-b", str(path), user, password], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise AssertionError(f"mosquitto_passwd failed:\n{result.stderr}{result.stdout}")
    return path


def secure_mosquitto(workdir: Path, pki: Pki, users: dict[str, str]) -> ServerProcess:
    """Mosquitto with one TLS listener on a free loopback port that requires a client certificate
    signed by ``pki``'s CA *and* a user name and password from ``users``; no anonymous access."""
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    passwords = password_file(workdir / "passwords", users)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki.ca_cert}\n"
        f"certfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\n"
        "require_certificate true\n"
        "allow_anonymous false\n"
        f"password_file {passwords}\n"
        # As root Mosquitto would switch to the `mosquitto` user, which cannot read the keys in the
        # test's private temporary directory; stay whoever runs the tests (ignored when not root).
        f"user {getpass.getuser()}\n"
        "persistence false\n"
        # A log file, not stdout: Mosquitto flushes it line by line, so tests can wait on it.
        f"log_dest file {workdir / BROKER_LOG}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    return ServerProcess(
        "mosquitto", [binary, "-c", str(conf)], port, workdir, lambda s: port_open(s.port)
    )


def broker_log(server: ServerProcess) -> str:
    """What the broker has logged so far (see `secure_mosquitto`)."""
    path = server.workdir / BROKER_LOG
    return path.read_text() if path.exists() else ""
