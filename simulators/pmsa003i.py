"""A byte-exact simulated Plantower PMSA003I particulate sensor for `simulators.i2c.SimI2CBus`.

The PMSA003I has no command set on I2C: a host reads 32 bytes from address 0x12 and gets the
newest frame, which the chip refreshes about once a second (datasheet, "Digital interface"):

    bytes 0-1    0x42 0x4D ("BM")          frame header
    bytes 2-3    28                         frame length (13 data words + checksum)
    bytes 4-9    PM1.0 / PM2.5 / PM10       µg/m³, CF=1 ("standard particle")
    bytes 10-15  PM1.0 / PM2.5 / PM10       µg/m³, atmospheric environment
    bytes 16-27  particles > 0.3, 0.5, 1.0, 2.5, 5.0, 10 µm per 0.1 L of air
    bytes 28-29  version, error code        (data 13, "reserved")
    bytes 30-31  checksum                   sum of bytes 0-29, big-endian

Every word is big-endian; ``adafruit_pm25`` checks the header, the length and the checksum.

**Warm-up.** The datasheet asks for at least 30 s after power-on or wake-up before the data is
stable, because the fan is not yet at speed. The frame carries no flag for it, so neither does
the simulator: for the first `WARMUP_S` after `power_on` it serves well-formed frames whose
concentrations ramp up from zero with the fan. Those numbers are plausible but wrong, which is
the point: a driver can only recognise warm-up by the time since it woke the chip, never by the
frame.

Fault knobs, settable at any time from any thread: ``fault_header`` / ``fault_checksum`` corrupt
the next N frames, ``fault_nack`` NACKs the next N transactions, ``stuck`` freezes the frame (a
stalled fan or a hung MCU behind a live interface), ``powered = False`` makes the chip absent.
``reads`` counts the frames served.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

from simulators.i2c import nack
from simulators.particles import ClassroomDust, PmSample

#: The PMSA003I's fixed I2C address.
ADDRESS = 0x12
FRAME_BYTES = 32
#: The frame length field: 13 data words and the checksum word, in bytes.
FRAME_LENGTH = 28
HEADER = b"BM"
#: Seconds after power-on before the data is stable (datasheet: "at least 30 seconds").
WARMUP_S = 30.0
#: How often the chip computes a new frame, in seconds.
FRAME_PERIOD_S = 1.0
#: Data 13's high byte; PMSA003 parts in the field report 0x97 (the low byte is the error code).
VERSION = 0x97

#: The environment the chip measures: ``env(t) -> PmSample``.
Environment = Callable[[float], PmSample]


def encode_frame(words: Sequence[int], *, version: int = VERSION, error_code: int = 0) -> bytes:
    """A complete 32-byte frame for the 12 measurement words (CF=1 PM x3, ATM PM x3, counts x6)."""
    if len(words) != 12:
        raise ValueError(f"a PMSA003I frame has 12 measurement words, got {len(words)}")
    body = HEADER + FRAME_LENGTH.to_bytes(2, "big")
    body += b"".join(min(0xFFFF, max(0, int(w))).to_bytes(2, "big") for w in words)
    body += bytes([version, error_code])
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


def cf1_from_atm(atm: float) -> float:
    """The CF=1 value the Plantower firmware reports for an atmospheric one.

    Both are equal up to about 30 µg/m³ and CF=1 grows about 1.5 times faster above (the shape
    field studies of PMS5003/PMSA003 parts found); good enough to make the two series differ.
    """
    return atm if atm <= 30.0 else 30.0 + 1.5 * (atm - 30.0)


def counts_from_mass(sample: PmSample) -> list[float]:
    """Particles per 0.1 L above 0.3, 0.5, 1.0, 2.5, 5.0 and 10 µm, non-increasing by size."""
    fine, mid, coarse = sample.pm1, sample.pm25 - sample.pm1, sample.pm10 - sample.pm25
    c03 = 150.0 * fine + 40.0 * mid + 5.0 * coarse
    c05 = 45.0 * fine + 30.0 * mid + 4.0 * coarse
    c10 = 4.0 * fine + 18.0 * mid + 3.5 * coarse
    c25 = 0.5 * fine + 1.5 * mid + 2.5 * coarse
    c50 = 0.4 * coarse
    c100 = 0.08 * coarse
    return [c03, c05, c10, c25, c50, c100]


class Pmsa003iChip:
    """A PMSA003I as an `simulators.i2c.I2CChip`; attach it at `ADDRESS`.

    Powered on at construction (``clock()`` then starts the warm-up). A frame is a function of
    the frame slot ``floor(t)`` and the seed: reading twice within one second returns the same
    frame, as the real part does, and counts carry a little seeded noise, so consecutive healthy
    frames practically never repeat byte for byte.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        environment: Environment | None = None,
    ) -> None:
        self._clock = clock
        self._environment = environment or ClassroomDust(seed=seed)
        self._seed = seed
        self.fault_header = 0
        self.fault_checksum = 0
        self.fault_nack = 0
        self.stuck = False
        self.powered = True
        self.reads = 0
        self._powered_at = clock()
        self._last_frame: bytes | None = None

    def power_on(self) -> None:
        """Power-cycle or wake (SET pin high) the chip: the fan restarts and warm-up begins."""
        self.powered = True
        self._powered_at = self._clock()

    def write(self, data: bytes) -> None:
        """Acknowledge the address (a probe); the PMSA003I takes no commands over I2C."""
        self._listen()

    def read(self, n: int) -> bytes:
        """The newest frame (the first ``n`` bytes of it; longer reads are padded with 0x00)."""
        self._listen()
        frame = self._frame(self._clock())
        if self.fault_header > 0:
            self.fault_header -= 1
            frame = b"\x00\x00" + frame[2:]  # what a host sees when it reads mid-refresh
        elif self.fault_checksum > 0:
            self.fault_checksum -= 1
            frame = frame[:-1] + bytes([frame[-1] ^ 0x01])
        self.reads += 1
        return frame[:n].ljust(n, b"\x00")

    def _listen(self) -> None:
        if not self.powered:
            raise nack("unpowered")
        if self.fault_nack > 0:
            self.fault_nack -= 1
            raise nack("injected fault")

    def _frame(self, now: float) -> bytes:
        if self.stuck and self._last_frame is not None:
            return self._last_frame
        slot = math.floor(now / FRAME_PERIOD_S) * FRAME_PERIOD_S
        fan = min(1.0, max(0.0, (now - self._powered_at) / WARMUP_S))
        sample = self._environment(slot)
        atm = [sample.pm1 * fan, sample.pm25 * fan, sample.pm10 * fan]
        noise = random.Random(f"pmsa003i:{self._seed}:{slot}")
        counts = [c * fan * noise.uniform(0.95, 1.05) for c in counts_from_mass(sample)]
        words = [round(cf1_from_atm(v)) for v in atm] + [round(v) for v in atm]
        frame = encode_frame(words + [round(c) for c in counts])
        self._last_frame = frame
        return frame
