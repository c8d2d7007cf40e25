"""The error hierarchy.

Every failure the gateway expects is a `GatewayError`; anything else is a bug and is only caught by
the task supervisor. Drivers raise `DeviceError` subclasses so that the scheduler can count errors
per device and per class without knowing the transport.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is unusable. The message names the file, the key path and what was expected."""


class DeviceError(GatewayError):
    """A device did not deliver a usable answer.

    ``kind`` is the coarse class a failed poll is counted under (``timeout``, ``decode``, ...);
    ``fault`` is the detailed class the transport saw (``crc``, ``wrong_tid``, ``stale``,
    ``exception-0x02``, ...; see `FAULT_CLASSES`), counted separately so that a technician can
    tell line noise from a misconfigured unit id. It defaults to ``kind``.
    """

    #: Short stable name of the error class, used for per-class counters and log lines.
    kind = "device"

    def __init__(self, message: str, *, fault: str | None = None) -> None:
        super().__init__(message)
        self.fault = fault or self.kind


class DeviceTimeout(DeviceError):
    """No answer (or no data ready) within the device's timeout; also NACK on I2C, refused TCP."""

    kind = "timeout"


class DeviceNotReady(DeviceError):
    """The device is fine but has no new data yet (a sensor between measurements).

    Not a fault: nothing is counted or logged. The scheduler asks again after ``retry_after``
    seconds and lets the other devices on the bus go first, so a waiting sensor never holds a
    shared bus. A driver that stays not ready for too long raises `DeviceTimeout` instead.
    """

    kind = "not_ready"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DecodeError(DeviceError):
    """An answer arrived but is malformed: CRC/checksum mismatch, short frame, bad header."""

    kind = "decode"


class DeviceStuck(DecodeError):
    """The sensor returned the same raw measurement for too many polls in a row.

    A `DecodeError` (the answer arrived but cannot be trusted), counted under its own kind so that
    a stuck sensor stands out from line noise in the per-device error counters.
    """

    kind = "stuck"


class DeviceBusy(DeviceError):
    """The device answered that it is busy (Modbus exception 06); retry later."""

    kind = "busy"

    def __init__(self, message: str, *, fault: str | None = None) -> None:
        super().__init__(message, fault=fault or exception_fault(0x06))


class DeviceRejected(DeviceError):
    """The device refused the request (Modbus exception codes other than busy).

    ``code`` is the Modbus exception code when there is one (0x02 illegal address, 0x0A/0x0B a
    TCP-to-RS-485 gateway saying "no such unit behind me"); the fault class is then
    ``exception-0xNN``.
    """

    kind = "rejected"

    def __init__(self, message: str, *, code: int | None = None, fault: str | None = None) -> None:
        super().__init__(message, fault=fault or (exception_fault(code) if code else None))
        self.code = code


def exception_fault(code: int) -> str:
    """The fault class of Modbus exception ``code``: ``exception-0x02`` and so on."""
    return f"exception-{code:#04x}"


#: The detailed fault classes of the Modbus transports (``DeviceError.fault``), besides
#: ``exception-0xNN``. Each is documented in docs/mqtt.md (status counters) and
#: docs/design.md (why the answer is rejected).
FAULT_CLASSES = (
    "timeout",  # no answer (or connection refused / closed before any answer)
    "crc",  # an RTU frame of the expected shape with a wrong CRC
    "truncated",  # our header, then the frame stopped (silence, or the connection closed)
    "garbage",  # bytes that are no frame of ours (noise, a desynchronised stream)
    "wrong_function",  # a well-formed answer for another function code than we asked
    "wrong_unit",  # a well-formed answer from another unit id than we asked
    "wrong_tid",  # a Modbus TCP answer whose transaction id we never sent (0 included)
    "stale",  # an answer to an earlier request of ours (late, or a duplicate), discarded
    "byte_count",  # the byte count disagrees with the quantity asked or the frame length
    "length",  # a Modbus TCP header whose length field is impossible (too short or too long)
    "echo",  # an adapter in echo mode returned something other than our own request
)


class StorageError(GatewayError):
    """The durable buffer could not be written (disk full, I/O error, damaged card)."""


class SinkError(GatewayError):
    """A sink (MQTT broker, time-series store) did not accept data.

    ``retryable`` is False when sending the same data again cannot succeed (the store rejected its
    content, e.g. HTTP 400); the caller must then set the data aside instead of retrying forever.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
