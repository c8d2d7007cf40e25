"""A byte-exact simulated Sensirion SCD4x CO2 sensor for `simulators.i2c.SimI2CBus`.

The chip answers the SCD4x I2C command set as the datasheet (v1.7) specifies it: 16-bit big-endian
commands, argument and reply words as two bytes plus a Sensirion CRC-8, and the chip's state
machine (idle / periodic / low-power periodic / sleep). Whatever the real part refuses, the
simulator refuses the same way, by NACK: commands only allowed while idle during a periodic
measurement, a bad argument CRC, anything during a command's execution time (500 ms after
``stop_periodic_measurement``), a read with no data. Time is the injected ``clock``, so a test
drives data readiness and execution times with a fake clock instead of waiting.

Simplified on purpose: ASC, altitude and pressure are stored and read back but do not change the
readings; execution times of 1 ms are treated as instantaneous. The module's self-heating equals
the factory temperature offset (4 °C), so a fresh chip reports the environment's temperature.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from simulators.classroom import ClassroomAir
from simulators.i2c import nack

logger = logging.getLogger(__name__)

#: The environment the chip measures: ``env(t) -> (co2_ppm, temperature_c, rh_pct)``.
Environment = Callable[[float], tuple[float, float, float]]

#: The SCD4x's fixed I2C address.
ADDRESS = 0x62
#: Self-heating of the module in °C; the factory temperature offset compensates exactly this.
SELF_HEATING_C = 4.0
#: ``get_data_ready_status`` words: the low 11 bits are non-zero when a measurement is ready.
READY, NOT_READY = 0x8006, 0x8000
#: ``get_sensor_variant`` word of an SCD41 (bits 15:12 = 0b0001).
SCD41_VARIANT = 0x1440

_FACTORY_SETTINGS: Mapping[str, int] = MappingProxyType(
    {
        "temperature_offset": round(4.0 * 65535 / 175),  # 4 °C in offset ticks
        "altitude": 0,
        "asc_enabled": 1,
        "asc_target": 400,
        "asc_initial_period": 44,
        "asc_standard_period": 156,
    }
)


def crc8(data: bytes) -> int:
    """Sensirion CRC-8: polynomial 0x31, init 0xFF, no reflection; 0xBE 0xEF -> 0x92."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) if crc & 0x80 else crc << 1
        crc &= 0xFF
    return crc


def encode_words(words: list[int]) -> bytes:
    """Serialise 16-bit words as the SCD4x sends them: big-endian, each followed by its CRC."""
    out = bytearray()
    for word in words:
        pair = word.to_bytes(2, "big")
        out += pair + bytes([crc8(pair)])
    return bytes(out)


def decode_words(data: bytes) -> list[int]:
    """Parse ``word+CRC`` triplets; a bad length or CRC is a NACK, as on the real chip."""
    if len(data) % 3:
        raise nack(f"argument of {len(data)} bytes is not a sequence of word+CRC")
    words = []
    for i in range(0, len(data), 3):
        if crc8(data[i : i + 2]) != data[i + 2]:
            raise nack(f"bad CRC on argument word {i // 3}")
        words.append(int.from_bytes(data[i : i + 2], "big"))
    return words


class Mode(enum.Enum):
    """The chip's operating state."""

    IDLE = "idle"
    PERIODIC = "periodic"
    LOW_POWER = "low_power_periodic"
    SLEEP = "sleep"


@dataclass(frozen=True, slots=True)
class _Command:
    name: str
    args: tuple[int, ...] = (0,)  # accepted numbers of argument words
    while_measuring: bool = False  # accepted during a periodic measurement
    exec_s: float = 0.0  # execution time; the chip NACKs every transaction meanwhile
    setting: str | None = None  # for the plain get/set commands of one setting


_COMMANDS: Mapping[int, _Command] = MappingProxyType(
    {
        0x21B1: _Command("start_periodic_measurement"),
        0x21AC: _Command("start_low_power_periodic_measurement"),
        0x3F86: _Command("stop_periodic_measurement", while_measuring=True, exec_s=0.5),
        0xEC05: _Command("read_measurement", while_measuring=True),
        0xE4B8: _Command("get_data_ready_status", while_measuring=True),
        0xE000: _Command("ambient_pressure", args=(0, 1), while_measuring=True),
        0x3682: _Command("get_serial_number"),
        0x202F: _Command("get_sensor_variant"),
        0x2318: _Command("get", setting="temperature_offset"),
        0x241D: _Command("set", args=(1,), setting="temperature_offset"),
        0x2322: _Command("get", setting="altitude"),
        0x2427: _Command("set", args=(1,), setting="altitude"),
        0x2313: _Command("get", setting="asc_enabled"),
        0x2416: _Command("set", args=(1,), setting="asc_enabled"),
        0x233F: _Command("get", setting="asc_target"),
        0x243A: _Command("set", args=(1,), setting="asc_target"),
        0x2340: _Command("get", setting="asc_initial_period"),
        0x2445: _Command("set", args=(1,), setting="asc_initial_period"),
        0x234B: _Command("get", setting="asc_standard_period"),
        0x244E: _Command("set", args=(1,), setting="asc_standard_period"),
        0x3615: _Command("persist_settings", exec_s=0.8),
        0x362F: _Command("perform_forced_recalibration", args=(1,), exec_s=0.4),
        0x219D: _Command("measure_single_shot", exec_s=5.0),
        0x2196: _Command("measure_single_shot_rht_only", exec_s=0.05),
        0x3646: _Command("reinit", exec_s=0.03),
        0x3632: _Command("perform_factory_reset", exec_s=1.2),
        0x3639: _Command("perform_self_test", exec_s=10.0),
        0x36E0: _Command("power_down"),
        0x36F6: _Command("wake_up", exec_s=0.03),
    }
)
_WAKE_UP = bytes.fromhex("36f6")
#: Minimum time in periodic measurement before a forced recalibration can succeed.
_FRC_WARMUP_S = 180.0


class Scd4xChip:
    """An SCD4x (SCD41 variant) as an `simulators.i2c.I2CChip`; attach it at `ADDRESS`.

    Fault knobs, settable at any time from any thread: ``fault_crc`` corrupts the CRC of the next
    N replies, ``fault_nack`` NACKs the next N transactions, ``stuck`` freezes the reported
    measurement while data keeps coming (a dead sensing element behind a live interface).
    ``log`` holds every command write the chip saw, including ones it rejected (not probes and not
    transactions NACKed before the chip listened: busy, asleep, ``fault_nack``).
    ``eeprom_writes`` counts persist_settings and factory resets, the writes that wear the part.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        environment: Environment | None = None,
    ) -> None:
        self._clock = clock
        self._environment = environment or ClassroomAir(seed=seed)
        serial = random.Random(f"scd4x:{seed}").getrandbits(48)
        self.serial_words = [(serial >> shift) & 0xFFFF for shift in (32, 16, 0)]
        self.variant_word = SCD41_VARIANT
        self.settings = dict(_FACTORY_SETTINGS)
        self.eeprom = dict(_FACTORY_SETTINGS)
        self.ambient_pressure_hpa = 1013
        self.eeprom_writes = 0
        self.log: list[bytes] = []
        self.fault_crc = 0
        self.fault_nack = 0
        self.stuck = False
        self._mode = Mode.IDLE
        self._busy_until = -math.inf
        self._reply: bytes | None = None
        self._started = 0.0  # clock time the periodic measurement started
        self._period = 5.0
        self._consumed = 0  # index of the last periodic sample read out
        self._last_run_s = 0.0  # length of the last periodic measurement, for FRC
        self._shot: tuple[float, bool] | None = None  # (ready at, rh/t only) of a single shot
        self._frc_offset = 0
        self._last_words: list[int] | None = None
        self._handlers = self._command_handlers()

    def _command_handlers(self) -> dict[str, Callable[[list[int], float], list[int] | None]]:
        """One handler per command name: ``(argument words, now) -> reply words or None``."""
        return {
            "start_periodic_measurement": lambda w, now: self._start_periodic(5.0, now),
            "start_low_power_periodic_measurement": lambda w, now: self._start_periodic(30.0, now),
            "stop_periodic_measurement": lambda w, now: self._stop(now),
            "read_measurement": lambda w, now: self._take_measurement(now),
            "get_data_ready_status": lambda w, now: [
                READY if self._sample(now) is not None else NOT_READY
            ],
            "ambient_pressure": lambda w, now: self._ambient_pressure(w),
            "get_serial_number": lambda w, now: list(self.serial_words),
            "get_sensor_variant": lambda w, now: [self.variant_word],
            "persist_settings": lambda w, now: self._persist(),
            "perform_forced_recalibration": lambda w, now: [self._recalibrate(w[0], now)],
            "measure_single_shot": lambda w, now: self._single_shot(now + 5.0, rht_only=False),
            "measure_single_shot_rht_only": lambda w, now: self._single_shot(
                now + 0.05, rht_only=True
            ),
            "reinit": lambda w, now: self._reinit(),
            "perform_factory_reset": lambda w, now: self._factory_reset(),
            "perform_self_test": lambda w, now: [0x0000],
            "power_down": lambda w, now: self._set_mode(Mode.SLEEP),
            "wake_up": lambda w, now: self._set_mode(Mode.IDLE),
        }

    @property
    def mode(self) -> Mode:
        """The current operating state."""
        return self._mode

    def write(self, data: bytes) -> None:
        """Receive one write transaction: a command with its argument words, or a probe."""
        now = self._clock()
        self._listen(now, waking=data == _WAKE_UP)
        if not data:
            return
        self.log.append(bytes(data))
        self._reply = None
        spec = _COMMANDS.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
        if spec is None:
            raise nack(f"unknown command {data[:2].hex()}")
        words = decode_words(data[2:])
        if len(words) not in spec.args:
            raise nack(f"{spec.name} takes {spec.args} argument words, got {len(words)}")
        if self._mode in (Mode.PERIODIC, Mode.LOW_POWER) and not spec.while_measuring:
            raise nack(f"{spec.name} is not allowed during periodic measurement")
        reply = self._execute(spec, words, now)
        self._busy_until = now + spec.exec_s
        self._reply = None if reply is None else encode_words(reply)
        logger.debug("scd4x %s %s -> %s", spec.name, words, reply)
        if spec.name == "wake_up":
            raise nack("wake_up is executed but never acknowledged")

    def read(self, n: int) -> bytes:
        """Return the reply of the last command (once); NACK if there is none."""
        self._listen(self._clock(), waking=False)
        reply, self._reply = self._reply, None
        if reply is None:
            raise nack("no reply pending")
        if self.fault_crc > 0:
            self.fault_crc -= 1
            reply = reply[:2] + bytes([reply[2] ^ 0xFF]) + reply[3:]
        return reply[:n].ljust(n, b"\xff")

    def _listen(self, now: float, *, waking: bool) -> None:
        """Refuse a transaction the way the real part does, before it looks at any byte."""
        if self.fault_nack > 0:
            self.fault_nack -= 1
            raise nack("injected fault")
        if now < self._busy_until:
            raise nack("busy executing the previous command")
        if self._mode is Mode.SLEEP and not waking:
            raise nack("asleep")

    def _execute(self, spec: _Command, words: list[int], now: float) -> list[int] | None:
        if spec.setting is not None:
            if spec.name == "get":
                return [self.settings[spec.setting]]
            self.settings[spec.setting] = words[0]
            return None
        return self._handlers[spec.name](words, now)

    def _start_periodic(self, period: float, now: float) -> None:
        self._mode = Mode.LOW_POWER if period > 5.0 else Mode.PERIODIC
        self._period, self._started, self._consumed, self._shot = period, now, 0, None

    def _stop(self, now: float) -> None:
        if self._mode is not Mode.IDLE:
            self._last_run_s = now - self._started
        self._mode = Mode.IDLE

    def _ambient_pressure(self, words: list[int]) -> list[int] | None:
        if not words:
            return [self.ambient_pressure_hpa]
        self.ambient_pressure_hpa = words[0]
        return None

    def _persist(self) -> None:
        self.eeprom = dict(self.settings)
        self.eeprom_writes += 1

    def _factory_reset(self) -> None:
        self.settings, self.eeprom = dict(_FACTORY_SETTINGS), dict(_FACTORY_SETTINGS)
        self.eeprom_writes += 1
        self._frc_offset = 0

    def _set_mode(self, mode: Mode) -> None:
        self._mode = mode

    def _single_shot(self, ready_at: float, *, rht_only: bool) -> None:
        self._shot = (ready_at, rht_only)

    def _reinit(self) -> None:
        self.settings = dict(self.eeprom)

    def _sample(self, now: float) -> tuple[float, bool] | None:
        """(time, rh/t only) of the measurement waiting in the output buffer, if any."""
        if self._mode in (Mode.PERIODIC, Mode.LOW_POWER):
            index = math.floor((now - self._started) / self._period)
            if index >= 1 and index > self._consumed:
                return self._started + index * self._period, False
            return None
        if self._mode is Mode.IDLE and self._shot is not None and now >= self._shot[0]:
            return self._shot
        return None

    def _take_measurement(self, now: float) -> list[int] | None:
        sample = self._sample(now)
        if sample is None:
            return None  # the read header is NACKed: the output buffer is empty
        if self._mode is Mode.IDLE:
            self._shot = None
        else:
            self._consumed = math.floor((now - self._started) / self._period)
        if self.stuck and self._last_words is not None:
            return list(self._last_words)
        co2, temperature, humidity = self._environment(sample[0])
        offset_c = self.settings["temperature_offset"] * 175 / 65535
        reported_c = temperature + SELF_HEATING_C - offset_c
        words = [
            0 if sample[1] else _word(co2 + self._frc_offset),
            _word((reported_c + 45) * 65535 / 175),
            _word(humidity * 65535 / 100),
        ]
        self._last_words = words
        return words

    def _recalibrate(self, target_ppm: int, now: float) -> int:
        if self._last_run_s < _FRC_WARMUP_S:
            return 0xFFFF  # datasheet: FRC fails unless measured > 3 min before
        correction = round(target_ppm - (self._environment(now)[0] + self._frc_offset))
        self._frc_offset += correction
        return (correction + 0x8000) & 0xFFFF


def _word(value: float) -> int:
    return min(0xFFFF, max(0, round(value)))
