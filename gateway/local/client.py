"""`gateway status`: ask the running daemon over its unix socket, print a table or the JSON.

A blocking client (the CLI has nothing else to do): one HTTP request on the socket with a
deadline. Every way of not reaching the daemon becomes `NotRunning` with one line that says what
to do; the caller exits 3 with it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import ValidationError

from gateway.errors import GatewayError
from gateway.local.snapshot import SNAPSHOT_VERSION, DeviceView, Snapshot

#: Seconds `gateway status` waits for the daemon's answer.
TIMEOUT = 5.0
#: Values shown per device line; an inverter reports ~75 metrics (all of them with --json).
SHOWN_VALUES = 6


class NotRunning(GatewayError):
    """The daemon cannot be reached on its socket; the message says what to do."""


def fetch(path: Path, route: str = "/status", *, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """(HTTP status, body) of ``GET route`` on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(
                f"GET {route} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode()
            )
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(
            f"the gateway daemon is not running (nothing answers on {path}); start it with "
            "`sudo systemctl start gateway`, and see `systemctl status gateway` for why it stopped"
        ) from exc
    except PermissionError as exc:
        raise NotRunning(
            f"cannot connect to {path}: permission denied; run `gateway status` as a member of "
            "group canary, or with sudo"
        ) from exc
    except TimeoutError as exc:
        raise NotRunning(
            f"the gateway daemon does not answer on {path} within {timeout:.0f} s; see "
            "`systemctl status gateway` and `journalctl -u gateway`"
        ) from exc
    except OSError as exc:
        raise NotRunning(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    fields = head.split(b" ", 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise GatewayError(f"{path}: not an HTTP answer: {head[:60]!r}")
    return int(fields[1]), body


def parse(body: bytes) -> Snapshot:
    """The snapshot in ``body``; a `GatewayError` if it is not one this version understands."""
    try:
        return Snapshot.model_validate_json(body)
    except ValidationError as exc:
        raise GatewayError(
            f"the daemon's status is not a version-{SNAPSHOT_VERSION} snapshot (is it another "
            f"version of canary-gateway?): {exc.errors()[0]['msg']}"
        ) from exc


def render(snap: Snapshot) -> str:
    """The human table: the gateway's state, then one line per device."""
    lines = [
        f"site     {snap.site}" + (f"  {snap.site_name}" if snap.site_name else ""),
        f"gateway  canary-gateway {snap.version}, up {duration(snap.uptime_s)}; health: "
        + ("ok" if snap.health.ok else "NOT OK"),
        *(f"         problem: {p}" for p in snap.health.problems),
        f"broker   {_broker(snap)}",
        f"clock    {_clock(snap)}",
        f"buffer   {_buffer(snap)}",
        f"alarms   {_alarms(snap)}",
        "",
        f"{'DEVICE':<22} {'DRIVER':<9} {'AGE':>8}  VALUES",
    ]
    lines += [_device(d) for d in snap.devices]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``4.2 s``, ``12 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _broker(snap: Snapshot) -> str:
    broker = snap.broker
    where = f"{broker.host}:{broker.port}"
    if broker.connected:
        text = f"{where} connected for {duration(broker.since_s)}"
    else:
        text = f"{where} NOT connected for {duration(broker.since_s)}"
        if broker.connect_failures:
            text += f" ({broker.connect_failures} failed attempts)"
    if broker.last_puback_age_s is not None:
        text += f"; last PUBACK {duration(broker.last_puback_age_s)} ago"
    return text


def _clock(snap: Snapshot) -> str:
    clock = snap.clock
    if clock.synced:
        return "synchronised"
    text = "NOT synchronised"
    if clock.untrusted_for_s is not None:
        text += f" for {duration(clock.untrusted_for_s)}"
    if clock.holding:
        return text + f"; holding readings for re-stamping (up to {duration(clock.hold_s)})"
    return text + "; readings go out flagged time_synced=false"


def _buffer(snap: Snapshot) -> str:
    buffer = snap.buffer
    if not buffer.storage_answering:
        return f"the storage does not answer ({buffer.unwritten} readings only in memory)"
    parts = [f"{buffer.pending} pending"]
    if buffer.oldest_pending is not None:
        parts[0] += f" (oldest {duration(buffer.oldest_pending.age_s)} old)"
    parts.append(f"{buffer.unwritten} only in memory")
    parts.append(f"{buffer.dropped} dropped")
    if buffer.unstored:
        parts.append(f"{buffer.unstored} lost to storage failures")
    if buffer.storage_failing:
        parts.append("STORAGE FAILING")
    gaps = buffer.declared_gaps
    parts.append(
        "gaps declared at start: "
        + ", ".join(f"{g.from_seq}-{g.to_seq} ({g.reason})" for g in gaps)
        if gaps
        else "no gaps declared"
    )
    return ", ".join(parts)


def _alarms(snap: Snapshot) -> str:
    if not snap.alarms:
        return "none"
    return "; ".join(
        f"{a.name} {a.device}" + ("" if a.value is None else f" {_number(a.value)} {a.unit}")
        for a in snap.alarms
    )


def _device(device: DeviceView) -> str:
    age = "never" if device.last_poll_age_s is None else duration(device.last_poll_age_s)
    shown = [
        f"{v.metric} {_number(v.value)}" + (f" {v.unit}" if _shows_unit(v.unit, v.value) else "")
        for v in device.values[:SHOWN_VALUES]
    ]
    if len(device.values) > SHOWN_VALUES:
        shown.append(f"(+{len(device.values) - SHOWN_VALUES} more)")
    text = ", ".join(shown) or "no values yet"
    error = device.last_error
    if not device.available and error is not None:
        fault = error.kind if error.fault == error.kind else f"{error.kind}/{error.fault}"
        text = (
            f"FAILING ({device.consecutive_failures} in a row, {fault}: {error.message}); "
            f"last values: {text}"
        )
    return f"{device.id:<22} {device.driver:<9} {age:>8}  {text}"


def _shows_unit(unit: str, value: object) -> bool:
    """No unit after "—", and none for a plain number (UCUM's "1": counts, codes, ratios)."""
    return bool(unit) and unit != "1" and value is not None


def _number(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
