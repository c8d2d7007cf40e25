"""Secrets and TLS files: what `gateway.mqtt_client.make_client` needs when the publisher starts.

A secret (`gateway.config.Credentials`) is an environment variable that must be set and not
empty, or a file that must be a regular file the daemon can read, holding something besides
whitespace. TLS files must be readable the same way and load with OpenSSL as the daemon loads
them; every certificate must be valid now (its dates are in the message), except in a CA file,
where it is enough that one is (a bundle often carries a retired root next to its successor).
The client key must match the client certificate and must not be encrypted (the daemon cannot
type a passphrase).
"""

from __future__ import annotations

import ssl
from datetime import datetime
from pathlib import PurePosixPath

from gateway.config import Credentials, TlsConfig
from gateway.mqtt_client import EncryptedKey, refuse_passphrase, ssl_reason
from gateway.preflight.files import read_file
from gateway.preflight.host import Host
from gateway.preflight.problem import Problem
from gateway.preflight.x509 import Validity, pem_certificates, validity


def check_secret(host: Host, key: str, secret: Credentials) -> list[Problem]:
    """The secret at ``key`` (e.g. ``mqtt.password``) can be resolved by the daemon."""
    if secret.env is not None:
        value = host.environ.get(secret.env)
        if value is not None and value.strip():
            return []
        state = "not set" if value is None else "empty"
        where = f" ({host.environment_note})" if host.environment_note else ""
        expected = (
            f"expected a variable that is set and not empty in the daemon's environment{where}"
        )
        return [Problem(f"{key}.env", expected, f"{secret.env}: {state}")]
    if secret.file is None:  # excluded by the model's validator
        return []
    path = host.absolute(secret.file)
    problems, data = read_file(host, f"{key}.file", path, "a file holding the secret")
    if not problems and not data.strip():
        problems.append(
            Problem(f"{key}.file", "expected a file holding the secret", f"{path}: empty")
        )
    return problems


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _dates_problem(
    key: str, path: str, dates: list[Validity], now: datetime, *, any_ok: bool
) -> Problem | None:
    """A problem if the certificates' dates are wrong at ``now``: every one must be valid, or
    with ``any_ok`` at least one."""
    bad = [(n, v) for n, v in enumerate(dates, start=1) if not v.not_before <= now <= v.not_after]
    if not bad or (any_ok and len(bad) < len(dates)):
        return None
    n, dates_of = bad[0]
    which = "" if len(dates) == 1 else f"certificate {n} of {len(dates)} "
    if any_ok and len(dates) > 1:
        which = f"all {len(dates)} certificates invalid; certificate {n} "
    expected = f"expected certificates valid now ({_when(now)})"
    if now > dates_of.not_after:
        return Problem(key, expected, f"{path}: {which}expired on {_when(dates_of.not_after)}")
    return Problem(
        key,
        expected,
        f"{path}: {which}valid only from {_when(dates_of.not_before)}; is the clock right?",
    )


def _certificates(host: Host, key: str, data: bytes, path: str, *, any_ok: bool) -> list[Problem]:
    """Parse the PEM certificates of a readable file and check their dates."""
    try:
        dates = [validity(der) for der in pem_certificates(data)]
    except ValueError as exc:
        return [Problem(key, "expected PEM certificates", f"{path}: {exc}")]
    if not dates:
        return [
            Problem(
                key,
                "expected PEM certificates (-----BEGIN CERTIFICATE-----)",
                f"{path}: none found",
            )
        ]
    problem = _dates_problem(key, path, dates, host.now, any_ok=any_ok)
    return [problem] if problem else []


def check_tls(host: Host, tls: TlsConfig) -> list[Problem]:
    """``[mqtt.tls]``: each file readable by the daemon, loadable by OpenSSL, valid now."""
    problems: list[Problem] = []
    if tls.ca_file is not None:
        key, path = "mqtt.tls.ca_file", host.absolute(tls.ca_file)
        found, data = read_file(host, key, path, "a file of PEM CA certificates")
        problems += found
        if data:
            try:
                ssl.create_default_context().load_verify_locations(str(host.locate(path)))
            except OSError as exc:
                problems.append(
                    Problem(key, "expected PEM CA certificates", f"{path}: {ssl_reason(exc)}")
                )
            else:
                problems += _certificates(host, key, data, str(path), any_ok=True)
    if tls.cert_file is None or tls.key_file is None:
        return problems
    cert, private = host.absolute(tls.cert_file), host.absolute(tls.key_file)
    found, cert_data = read_file(host, "mqtt.tls.cert_file", cert, "a PEM certificate file")
    problems += found
    cert_problems = (
        _certificates(host, "mqtt.tls.cert_file", cert_data, str(cert), any_ok=False)
        if cert_data
        else []
    )
    problems += cert_problems
    found, key_data = read_file(host, "mqtt.tls.key_file", private, "a PEM private key file")
    problems += found
    if cert_data and key_data and not cert_problems:
        problem = _key_matches(host, cert, private)
        if problem is not None:
            problems.append(problem)
    return problems


def _key_matches(host: Host, cert: PurePosixPath, private: PurePosixPath) -> Problem | None:
    """Load the pair as the daemon does (`gateway.mqtt_client.tls_context`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(
            str(host.locate(cert)), str(host.locate(private)), password=refuse_passphrase
        )
    except EncryptedKey:
        return Problem(
            "mqtt.tls.key_file",
            "expected an unencrypted key: the daemon cannot type a passphrase "
            "(openssl pkey -in KEY -out KEY.plain, then readable by the daemon only)",
            f"{private}: encrypted",
        )
    except OSError as exc:
        reason = ssl_reason(exc)
        if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
            return Problem(
                "mqtt.tls.key_file", f"expected the private key of {cert}", f"{private}: {reason}"
            )
        return Problem("mqtt.tls.key_file", "expected a PEM private key", f"{private}: {reason}")
    return None
