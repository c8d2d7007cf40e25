"""Builds paho-mqtt clients the same way for the publisher, the bridge and the demo watcher.

paho's own network thread (``loop_start``) drives the socket and its automatic reconnect with
backoff; it is the library's supported mode and it keeps a slow broker from ever blocking the
event loop. Callbacks run on that thread, so every callback here only hands its event to the
asyncio loop with ``call_soon_threadsafe`` (`LoopBridge`); no other state is shared between threads.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MqttConfig, TlsConfig
from gateway.errors import ConfigError


def make_client(
    config: MqttConfig, *, client_id: str, clean_session: bool, manual_ack: bool = False
) -> mqtt.Client:
    """A configured, not yet connected client (MQTT 3.1.1, so any broker will do)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_inflight_messages_set(config.max_inflight)
    client.max_queued_messages_set(0)  # the durable buffer bounds what we hand to paho
    if config.username is not None:
        password = config.password.resolve() if config.password is not None else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        client.tls_set_context(tls_context(config.tls))
    return client


class EncryptedKey(Exception):
    """Raised by the passphrase callback: the daemon has nobody to type a passphrase."""


def refuse_passphrase() -> str:
    """The passphrase callback for ``load_cert_chain``: raises `EncryptedKey`."""
    raise EncryptedKey


def ssl_reason(exc: OSError) -> str:
    """What went wrong loading a TLS file, in a few words: OpenSSL's reason
    (``KEY_VALUES_MISMATCH``, ``NO_CERTIFICATE_OR_CRL_FOUND``) or the OS error."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason
        if reason is None or reason == "PEM lib":
            return "not a PEM file of the expected kind"
        return str(reason).lower().replace("_", " ")
    return exc.strerror or str(exc)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context for ``[mqtt.tls]``.

    Raises `ConfigError` naming the key when a file cannot be used (missing, unreadable, not
    PEM, a key that does not match its certificate, an encrypted key): these are expected
    failures with a fix, to be logged as one line, not as a crash with a traceback. An
    encrypted key is refused at once rather than prompting on a terminal (OpenSSL's default):
    a daemon has no one to type the passphrase.
    """
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"mqtt.tls.ca_file: cannot load {tls.ca_file}: {ssl_reason(exc)}"
        ) from exc
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(
                str(tls.cert_file), str(tls.key_file), password=refuse_passphrase
            )
        except EncryptedKey as exc:
            raise ConfigError(
                f"mqtt.tls.key_file: {tls.key_file} is encrypted; the daemon cannot type its "
                "passphrase (store the key unencrypted, readable by the daemon only)"
            ) from exc
        except OSError as exc:
            raise ConfigError(
                f"mqtt.tls.cert_file, key_file: cannot load {tls.cert_file} with "
                f"{tls.key_file}: {ssl_reason(exc)}"
            ) from exc
    return context


class LoopBridge:
    """Marshals paho callbacks (network thread) onto the asyncio loop that created it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop; safe from any thread, ignored after loop shutdown."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)


def reason_text(reason_code: Any) -> str:
    """Readable text for a paho v2 ReasonCode or a plain int."""
    return str(getattr(reason_code, "getName", lambda: reason_code)())


class ConnectionReporter:
    """Logs a broker connection problem once per outage, with its cause, and the recovery once.

    paho retries on its own (1 s doubling to 30 s); a warning per retry would bury the log, and a
    TLS rejection (e.g. a missing client certificate) would otherwise not be logged at all: it
    shows up only as a socket error in paho's own log, which `paho_log` records as the cause.
    `paho_log` runs on paho's thread and only stores a string; the other methods run on the loop.
    """

    def __init__(self, *, logger: logging.Logger, host: str, port: int) -> None:
        self._log = logger
        self._where = f"{host}:{port}"
        self._failing = False
        self._last_error: str | None = None
        #: Failed attempts in the current outage.
        self.failures = 0

    def paho_log(self, client: mqtt.Client, userdata: Any, level: int, message: str) -> None:
        """paho's ``on_log``: remember the last error as the likely cause."""
        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = message

    def failed(self, reason: str | None = None) -> None:
        """An attempt failed (refused, unreachable, TLS rejected)."""
        self.failures += 1
        if not self._failing:
            self._failing = True
            self._log.warning(
                "cannot connect to MQTT broker %s (%s); retrying with backoff",
                self._where,
                reason or self._last_error or "no answer",
            )

    def connected(self) -> None:
        """The connection is up; report the recovery if there was an outage."""
        if self._failing:
            self._log.info(
                "connected to MQTT broker %s after %d failed attempts", self._where, self.failures
            )
        else:
            self._log.info("connected to MQTT broker %s", self._where)
        self._failing, self.failures, self._last_error = False, 0, None

    @property
    def failing(self) -> bool:
        """True between a failed attempt and the next successful connection."""
        return self._failing
