"""The validity dates of PEM certificates, with the standard library only.

The ``ssl`` module loads and verifies certificates but has no public way to read a leaf
certificate's dates (``SSLContext.get_ca_certs`` lists CA certificates only; the decoder behind
``getpeercert`` is the private ``ssl._ssl._test_decode_cert``). ``cryptography`` would do it,
but it is a compiled dependency (with ``cffi``) for two dates, and 32-bit Raspberry Pi OS
(armhf) has had wheels on PyPI only since release 45 (2025). So this module reads the two
fields itself: a DER walk down to ``tbsCertificate.validity`` (RFC 5280, section 4.1), nothing
else. Whether the file is a usable certificate at all is OpenSSL's call (the checks load it with
``ssl`` too); this only answers "from when, until when".
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime

_PEM = re.compile(
    rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----\s*(.+?)\s*-----END (?:TRUSTED )?CERTIFICATE-----",
    re.DOTALL,
)
_SEQUENCE, _CONTEXT_0, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0xA0, 0x17, 0x18


@dataclass(frozen=True, slots=True)
class Validity:
    """A certificate's ``notBefore`` and ``notAfter``, aware UTC."""

    not_before: datetime
    not_after: datetime


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bytes of every ``CERTIFICATE`` block in ``data``; raises ``ValueError`` for a
    block that is not base64."""
    try:
        return [base64.b64decode(block, validate=False) for block in _PEM.findall(data)]
    except binascii.Error as exc:
        raise ValueError(f"a certificate block is not base64 ({exc})") from exc


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    start = pos + 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or start + size > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start : start + size], "big")
        start += size
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def _time(der: bytes, pos: int) -> tuple[datetime, int]:
    tag, start, end = _element(der, pos)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z"):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280 4.1.2.5.1
    elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")):
        raise ValueError(f"unsupported time {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC), end


def validity(der: bytes) -> Validity:
    """The validity of one DER certificate; raises ``ValueError`` if it is not one."""
    tag, start, _ = _element(der, 0)  # Certificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    tag, pos, _ = _element(der, start)  # tbsCertificate
    if tag != _SEQUENCE:
        raise ValueError("not a certificate")
    if der[pos] == _CONTEXT_0:  # [0] EXPLICIT version
        pos = _element(der, pos)[2]
    for _field in ("serialNumber", "signature", "issuer"):
        pos = _element(der, pos)[2]
    tag, pos, _ = _element(der, pos)
    if tag != _SEQUENCE:
        raise ValueError("no validity")
    not_before, pos = _time(der, pos)
    not_after, _ = _time(der, pos)
    return Validity(not_before=not_before, not_after=not_after)
