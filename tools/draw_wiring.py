"""Draw the wiring diagrams of docs/install.md into docs/images/wiring-*.png (Pillow only).

The diagrams are drawn from data, not by hand, so that a pin number in a picture is the pin
number in `HEADER`, and the test that checks the committed PNGs (tests/test_docs.py) fails when
someone edits one without the other.

`HEADER` is the Raspberry Pi 40-pin header (every model with 40 pins: Pi 2/3/4/5, Zero 2 W) as
Pinout.xyz lists it: pinout-xyz/Pinout.xyz, ``src/en/template/pinout.yaml`` (physical pin ->
name and BCM GPIO number). The Inky pHAT's pins are from the same project's
``src/en/overlay/inkyphat.md`` and Pimoroni's driver (pimoroni/inky, ``inky/inky_ssd1608.py``:
RESET 27, BUSY 17, DC 22, CS0 8; ``inky/eeprom.py``: its EEPROM at I2C 0x50 on bus 1).

Text uses Pillow's built-in scalable font (``ImageFont.load_default(size=...)``), as the e-ink
renderer does, so the images come out the same on any machine with the project's Pillow. That
font has no Ohm or micro glyphs: the diagrams write "ohm".

Usage: ``python tools/draw_wiring.py [DIR]`` (default: docs/images).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent

#: Physical pin -> (label, BCM GPIO number or None), from Pinout.xyz (module docstring).
HEADER: dict[int, tuple[str, int | None]] = {
    1: ("3V3", None),
    2: ("5V", None),
    3: ("GPIO2 SDA", 2),
    4: ("5V", None),
    5: ("GPIO3 SCL", 3),
    6: ("GND", None),
    7: ("GPIO4", 4),
    8: ("GPIO14 TXD", 14),
    9: ("GND", None),
    10: ("GPIO15 RXD", 15),
    11: ("GPIO17", 17),
    12: ("GPIO18", 18),
    13: ("GPIO27", 27),
    14: ("GND", None),
    15: ("GPIO22", 22),
    16: ("GPIO23", 23),
    17: ("3V3", None),
    18: ("GPIO24", 24),
    19: ("GPIO10 MOSI", 10),
    20: ("GND", None),
    21: ("GPIO9 MISO", 9),
    22: ("GPIO25", 25),
    23: ("GPIO11 SCLK", 11),
    24: ("GPIO8 CE0", 8),
    25: ("GND", None),
    26: ("GPIO7 CE1", 7),
    27: ("GPIO0 ID_SD", 0),
    28: ("GPIO1 ID_SC", 1),
    29: ("GPIO5", 5),
    30: ("GND", None),
    31: ("GPIO6", 6),
    32: ("GPIO12", 12),
    33: ("GPIO13", 13),
    34: ("GND", None),
    35: ("GPIO19", 19),
    36: ("GPIO16", 16),
    37: ("GPIO26", 26),
    38: ("GPIO20", 20),
    39: ("GND", None),
    40: ("GPIO21", 21),
}


def pin_of_gpio(gpio: int) -> int:
    """The physical header pin of BCM GPIO ``gpio``."""
    for pin, (_label, number) in HEADER.items():
        if number == gpio:
            return pin
    raise KeyError(f"GPIO{gpio} is not on the 40-pin header")


@dataclass(frozen=True, slots=True, kw_only=True)
class LedSet:
    """One way to wire the traffic light: BCM GPIO per colour, and the ground pin."""

    red: int
    amber: int
    green: int
    ground_pin: int


#: The traffic lights the guide shows. ``plain``: the pins of docs/configuration.md's example,
#: for a Pi without an e-ink HAT. ``inky``: GPIO 17/27/22 are the Inky pHAT's BUSY/RESET/DC, so
#: with the panel the LEDs move to GPIO 5/6/13 (the demo's second room).
LED_SETS: dict[str, LedSet] = {
    "plain": LedSet(red=17, amber=27, green=22, ground_pin=9),
    "inky": LedSet(red=5, amber=6, green=13, ground_pin=39),
}

#: The I2C wiring: Pi pin -> (signal, STEMMA QT wire colour name).
I2C_PINS: dict[int, tuple[str, str]] = {
    1: ("3V3", "red"),
    3: ("SDA", "blue"),
    5: ("SCL", "yellow"),
    6: ("GND", "black"),
}

#: What the Inky pHAT uses (Pinout.xyz and pimoroni/inky, module docstring): pin -> role.
INKY_PINS: dict[int, str] = {
    1: "3V3",
    2: "5V",
    3: "EEPROM SDA (0x50)",
    5: "EEPROM SCL",
    11: "BUSY",
    13: "RESET",
    15: "DC",
    19: "SPI MOSI",
    21: "SPI MISO",
    23: "SPI SCLK",
    24: "SPI CE0",
}

# --- Colours and fonts --------------------------------------------------------------------------

WHITE = (255, 255, 255)
INK = (34, 34, 34)
GREY = (150, 150, 150)
LIGHT = (228, 228, 228)
BOARD = (27, 94, 32)  # the Pi's green
HEADER_BG = (45, 45, 45)
RED = (200, 30, 30)
BLUE = (30, 90, 200)
YELLOW = (240, 190, 0)
BLACK = (20, 20, 20)
AMBER = (245, 140, 0)
GREEN = (30, 150, 50)
PURPLE = (120, 60, 160)
WIRE_A = (30, 90, 200)
WIRE_B = (235, 110, 20)
SENSOR_BG = (30, 40, 70)

WIRE_COLOURS = {"red": RED, "blue": BLUE, "yellow": YELLOW, "black": BLACK}
LED_COLOURS = {"red": RED, "amber": AMBER, "green": GREEN}

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Point = tuple[float, float]


@cache
def font(size: int) -> Font:
    """Pillow's built-in scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def text_on(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    r, g, b = colour
    return INK if (0.299 * r + 0.587 * g + 0.114 * b) > 150 else WHITE


class Canvas:
    """A white image with the drawing helpers the diagrams share."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("RGB", (width, height), WHITE)
        self.draw = ImageDraw.Draw(self.image)

    def text(
        self,
        xy: Point,
        text: str,
        *,
        size: int = 18,
        fill: tuple[int, int, int] = INK,
        anchor: str = "la",
    ) -> None:
        self.draw.text(xy, text, font=font(size), fill=fill, anchor=anchor)

    def lines(self, xy: Point, lines: Iterable[str], *, size: int = 18, gap: int = 6) -> float:
        """Draw ``lines`` top-down from ``xy``; returns the y below the last one."""
        x, y = xy
        for line in lines:
            self.text((x, y), line, size=size)
            y += size + gap
        return y

    def wire(
        self, points: Sequence[Point], colour: tuple[int, int, int], *, width: int = 6
    ) -> None:
        """A wire along ``points``; light colours get a dark outline so they show on white."""
        if sum(colour) > 450:
            self.draw.line(list(points), fill=INK, width=width + 4, joint="curve")
        self.draw.line(list(points), fill=colour, width=width, joint="curve")

    def pill(
        self,
        xy: Point,
        text: str,
        colour: tuple[int, int, int],
        *,
        size: int = 17,
        anchor_right: bool = False,
    ) -> tuple[float, float, float, float]:
        """A rounded label; ``xy`` is its left (or right) middle. Returns its box."""
        x, y = xy
        w = self.draw.textlength(text, font=font(size)) + 16
        h = size + 10
        x0 = x - w if anchor_right else x
        box = (x0, y - h / 2, x0 + w, y + h / 2)
        self.draw.rounded_rectangle(box, radius=h / 2, fill=colour)
        self.text((x0 + w / 2, y), text, size=size, fill=text_on(colour), anchor="mm")
        return box

    def board(
        self,
        box: tuple[float, float, float, float],
        title: str,
        subtitle: str = "",
        *,
        fill: tuple[int, int, int] = SENSOR_BG,
    ) -> None:
        self.draw.rounded_rectangle(box, radius=10, fill=fill)
        x0, y0, x1, _ = box
        cx = (x0 + x1) / 2
        self.text((cx, y0 + 22), title, size=20, fill=text_on(fill), anchor="mm")
        if subtitle:
            for i, line in enumerate(subtitle.split("\n")):
                self.text((cx, y0 + 50 + i * 22), line, size=17, fill=text_on(fill), anchor="mm")

    def save(self, path: Path) -> None:
        self.image.save(path, optimize=True)


# --- The 40-pin header ---------------------------------------------------------------------------

ROW_H = 36  # pixels per header row (two pins)
PIN_R = 14


@dataclass(frozen=True, slots=True)
class HeaderLayout:
    """Where a drawn header's pins are: ``x`` is the odd column's centre, ``y`` the first row's."""

    x: float
    y: float
    first_row: int  # 0-based row index (row r holds pins 2r+1 and 2r+2)

    def centre(self, pin: int) -> Point:
        row = (pin - 1) // 2 - self.first_row
        dx = 0 if pin % 2 else 2 * PIN_R + 10
        return (self.x + dx, self.y + row * ROW_H)

    @property
    def odd_edge(self) -> float:
        """x of the left end of the odd column's labels (wires to the left start here)."""
        return self.x - PIN_R - 150

    @property
    def even_edge(self) -> float:
        """x of the right end of the even column's labels."""
        return self.x + 3 * PIN_R + 10 + 150


def draw_header(
    c: Canvas,
    *,
    x: float,
    y: float,
    rows: range,
    used: dict[int, tuple[str, tuple[int, int, int]]],
    caption: str = "Pi header, pin 1 = square pad",
) -> HeaderLayout:
    """Rows ``rows`` (0-based) of the header, odd pins left, even right, pin 1 at the top left.

    ``used`` maps a pin to the label and colour of its pill; other pins are shown in grey with
    their Pinout.xyz name, so an installer can count along the header.
    """
    layout = HeaderLayout(x=x, y=y, first_row=rows.start)
    top = y - ROW_H / 2 - 4
    bottom = y + (len(rows) - 1) * ROW_H + ROW_H / 2 + 4
    c.draw.rounded_rectangle(
        (x - PIN_R - 8, top, x + 3 * PIN_R + 18, bottom), radius=6, fill=HEADER_BG
    )
    c.text(((2 * x + 2 * PIN_R + 10) / 2, bottom + 8), caption, size=16, anchor="mt")
    if rows.start > 0:
        c.text((x + PIN_R + 5, top - 6), f"(pins 1-{2 * rows.start} above)", size=15, anchor="mb")
    for row in rows:
        for pin in (2 * row + 1, 2 * row + 2):
            cx, cy = layout.centre(pin)
            name = HEADER[pin][0]
            if pin in used:
                label, colour = used[pin]
                fill, number_ink = colour, text_on(colour)
            else:
                label, colour, fill, number_ink = name, LIGHT, (110, 110, 110), WHITE
            if pin == 1:
                c.draw.rectangle(
                    (cx - PIN_R, cy - PIN_R, cx + PIN_R, cy + PIN_R), fill=fill, outline=WHITE
                )
            else:
                c.draw.ellipse(
                    (cx - PIN_R, cy - PIN_R, cx + PIN_R, cy + PIN_R), fill=fill, outline=WHITE
                )
            c.text((cx, cy), str(pin), size=14, fill=number_ink, anchor="mm")
            if pin in used:
                if pin % 2:
                    c.pill((cx - PIN_R - 8, cy), label, colour, anchor_right=True)
                else:
                    c.pill((cx + PIN_R + 8, cy), label, colour)
            else:
                side_x = cx - PIN_R - 10 if pin % 2 else cx + PIN_R + 10
                c.text((side_x, cy), label, size=15, fill=GREY, anchor="rm" if pin % 2 else "lm")
    return layout


def pill_left(layout: HeaderLayout, c: Canvas, pin: int, label: str) -> float:
    """x of the left end of an odd pin's pill (where its wire attaches)."""
    cx, _ = layout.centre(pin)
    return cx - PIN_R - 8 - (c.draw.textlength(label, font=font(17)) + 16)


def pill_right(layout: HeaderLayout, c: Canvas, pin: int, label: str) -> float:
    """x of the right end of an even pin's pill."""
    cx, _ = layout.centre(pin)
    return cx + PIN_R + 8 + c.draw.textlength(label, font=font(17)) + 16


# --- The diagrams ----------------------------------------------------------------------------------


def draw_i2c() -> Image.Image:
    """SCD-41 and PMSA003I on I2C bus 1 through STEMMA QT / Qwiic cables."""
    c = Canvas(1000, 560)
    c.text((24, 18), "Air sensors on I2C: one STEMMA QT / Qwiic chain", size=26)
    used = {pin: (signal, WIRE_COLOURS[colour]) for pin, (signal, colour) in I2C_PINS.items()}
    used[3] = ("SDA GPIO2", BLUE)
    used[5] = ("SCL GPIO3", YELLOW)
    layout = draw_header(c, x=780, y=120, rows=range(0, 5), used=used)

    # The two breakouts, the chain cable between them, and the cable to the Pi.
    scd = (294, 250, 510, 370)
    pms = (20, 250, 236, 370)
    c.board(scd, "Adafruit SCD-41", "CO2, temp., humidity\naddress 0x62")
    c.board(pms, "Adafruit PMSA003I", "fine dust (PM2.5)\naddress 0x12")
    order = ("black", "red", "blue", "yellow")  # the JST SH plug's order: GND, V+, SDA, SCL
    for i, colour in enumerate(order):
        y = 285 + i * 16
        c.wire([(pms[2], y), (scd[0], y)], WIRE_COLOURS[colour], width=5)
    c.text((265, 380), "STEMMA QT cable", size=16, anchor="mt")
    for box in (scd, pms):  # the two QT sockets per board
        for sx in (box[0] - 6, box[2] - 14):
            c.draw.rectangle((sx, 278, sx + 20, 346), fill=WHITE, outline=INK, width=2)

    # From the SCD-41's right socket to the header: one wire per pin.
    x_fan = scd[2]
    for i, colour in enumerate(order):
        pin = next(p for p, (_s, col) in I2C_PINS.items() if col == colour)
        y_sock = 285 + i * 16
        _, py = layout.centre(pin)
        turn = 540 + i * 22
        if pin % 2:  # odd pins: the wire ends at the pill's left end
            end = pill_left(layout, c, pin, used[pin][0])
            c.wire([(x_fan, y_sock), (turn, y_sock), (turn, py), (end, py)], WIRE_COLOURS[colour])
        else:  # pin 6, right column: round the top of the header
            end = pill_right(layout, c, pin, used[pin][0])
            top = layout.y - ROW_H / 2 - 52
            c.wire(
                [
                    (x_fan, y_sock),
                    (turn, y_sock),
                    (turn, top),
                    (end + 24, top),
                    (end + 24, py),
                    (end, py),
                ],
                WIRE_COLOURS[colour],
            )
    c.text((520, 372), "STEMMA QT to female", size=16, anchor="lt")
    c.text((520, 392), "jumper cable", size=16, anchor="lt")

    c.lines(
        (24, 452),
        [
            "Pi pin 1 = 3V3 (red),  pin 3 = SDA (blue),  pin 5 = SCL (yellow),  pin 6 = GND (black).",
            "Use 3V3, never 5V. Either board may come first: each has two QT sockets.",
            "Both are on /dev/i2c-1; `i2cdetect -y 1` must show 12 and 62.",
        ],
        size=19,
    )
    return c.image


def draw_leds(which: str) -> Image.Image:
    """A common-cathode traffic light: GPIO -> resistor -> LED -> shared ground."""
    leds = LED_SETS[which]
    gpios = {"red": leds.red, "amber": leds.amber, "green": leds.green}
    pins = {colour: pin_of_gpio(gpio) for colour, gpio in gpios.items()}
    all_pins = [*pins.values(), leds.ground_pin]
    first = 0 if which == "plain" else (min(all_pins) - 1) // 2 - 1
    last = (max(all_pins) - 1) // 2
    rows = range(first, min(20, last + 2))
    c = Canvas(1000, int(100 + len(rows) * ROW_H + 170))
    title = {
        "plain": "Traffic light on GPIO 17 / 27 / 22 (no e-ink HAT)",
        "inky": "Traffic light on GPIO 5 / 6 / 13 (with an Inky pHAT)",
    }[which]
    c.text((24, 18), title, size=26)
    used: dict[int, tuple[str, tuple[int, int, int]]] = {
        pin: (f"GPIO{gpios[colour]} {colour}", LED_COLOURS[colour]) for colour, pin in pins.items()
    }
    used[leds.ground_pin] = ("GND", BLACK)
    layout = draw_header(c, x=800, y=100, rows=rows, used=used)

    bus_x = 70
    _, gy = layout.centre(leds.ground_pin)
    ys = [layout.centre(pin)[1] for pin in pins.values()]
    for colour, pin in pins.items():
        _, y = layout.centre(pin)
        end = pill_left(layout, c, pin, used[pin][0])
        # wire, resistor (box), wire, LED (triangle and bar), wire to the ground bus
        c.wire([(end, y), (480, y)], LED_COLOURS[colour], width=4)
        c.draw.rectangle((400, y - 9, 480, y + 9), fill=(225, 205, 160), outline=INK, width=2)
        c.text((440, y - 12), "330 ohm", size=15, anchor="mb")
        c.wire([(400, y), (300, y)], INK, width=3)
        tri = [(300, y - 14), (300, y + 14), (262, y)]
        c.draw.polygon(tri, fill=LED_COLOURS[colour], outline=INK)
        c.draw.line([(258, y - 15), (258, y + 15)], fill=INK, width=4)
        c.wire([(258, y), (bus_x, y)], BLACK, width=4)
    gend = pill_left(layout, c, leds.ground_pin, "GND")
    top, bottom = min([*ys, gy]), max([*ys, gy])
    c.wire([(bus_x, top), (bus_x, bottom)], BLACK, width=4)
    c.wire([(bus_x, gy), (gend, gy)], BLACK, width=4)
    c.lines(
        (bus_x + 10, max(ys) + 26),
        [
            "LED: long leg (+, anode) to the resistor,",
            "short leg (-, cathode) to the shared ground wire",
        ],
        size=16,
        gap=4,
    )

    y_notes = 100 + len(rows) * ROW_H + 50
    c.lines(
        (24, y_notes),
        [
            f"red: GPIO{leds.red} = pin {pins['red']},  amber: GPIO{leds.amber} = pin "
            f"{pins['amber']},  green: GPIO{leds.green} = pin {pins['green']},  "
            f"ground: pin {leds.ground_pin}.",
            "One resistor per LED (220-470 ohm; 330 ohm gives a red LED about 4 mA).",
            f"Config: led = {{ red = {leds.red}, amber = {leds.amber}, green = {leds.green} }}"
            "   (BCM numbers, not pin numbers)",
        ],
        size=19,
    )
    return c.image


def draw_rs485() -> Image.Image:
    """A USB RS-485 adapter and two meters on one daisy-chained, terminated line."""
    c = Canvas(1000, 550)
    c.text((24, 18), "RS-485 (Modbus RTU): one line, terminated at both ends", size=26)
    ya, yb, yg = 200, 235, 270  # the A, B and common (GND) conductors
    top, bottom = 90, 330

    c.board((24, 160, 150, 290), "Pi", "USB port", fill=BOARD)
    adapter = (210, top, 410, bottom)
    meter1 = (540, top, 720, bottom)
    meter2 = (800, top, 980, bottom)
    c.board(adapter, "USB-RS485", "adapter: line end 1", fill=(60, 60, 60))
    c.board(meter1, "Meter 1", "unit_id 1, middle", fill=(70, 70, 110))
    c.board(meter2, "Meter 2", "unit_id 2: line end 2", fill=(70, 70, 110))
    c.wire([(150, 225), (210, 225)], GREY, width=10)
    c.text((180, 245), "USB", size=15, anchor="mt")

    def terminals(x: float, *, label_left: bool, offset: float = 12) -> None:
        for y, name in ((ya, "A"), (yb, "B"), (yg, "GND")):
            c.draw.rectangle((x - 7, y - 7, x + 7, y + 7), fill=WHITE, outline=INK, width=2)
            c.text(
                (x + (-offset if label_left else offset), y),
                name,
                size=16,
                fill=WHITE,
                anchor="rm" if label_left else "lm",
            )

    terminals(adapter[2], label_left=True, offset=44)
    terminals(meter1[0], label_left=False)
    terminals(meter1[2], label_left=True)
    terminals(meter2[0], label_left=False, offset=44)

    # The cable: twisted pair A/B, the common conductor, the shield (dashed) around them.
    for x0, x1 in ((adapter[2], meter1[0]), (meter1[2], meter2[0])):
        c.wire([(x0 + 7, ya), (x1 - 7, ya)], WIRE_A, width=5)
        c.wire([(x0 + 7, yb), (x1 - 7, yb)], WIRE_B, width=5)
        c.wire([(x0 + 7, yg), (x1 - 7, yg)], BLACK, width=3)
        for x in range(int(x0) + 14, int(x1) - 14, 16):
            c.draw.line([(x, ya - 20), (x + 8, ya - 20)], fill=GREY, width=3)
            c.draw.line([(x, yg + 20), (x + 8, yg + 20)], fill=GREY, width=3)
    c.text(((adapter[2] + meter1[0]) / 2, ya - 26), "shield", size=15, fill=GREY, anchor="mb")

    # 120 ohm across A and B inside each end device.
    def termination(x: float, terminal_x: float) -> None:
        c.draw.line([(terminal_x, ya), (x, ya)], fill=WHITE, width=2)
        c.draw.line([(terminal_x, yb), (x, yb)], fill=WHITE, width=2)
        c.draw.rectangle((x - 7, ya + 4, x + 7, yb - 4), fill=(225, 205, 160), outline=WHITE)
        c.draw.line([(x, ya), (x, ya + 4)], fill=WHITE, width=2)
        c.draw.line([(x, yb - 4), (x, yb)], fill=WHITE, width=2)

    termination(adapter[2] - 26, adapter[2] - 7)
    c.text((adapter[2] - 20, yg + 24), "120 ohm A-B", size=16, fill=WHITE, anchor="rt")
    termination(meter2[0] + 26, meter2[0] + 7)
    c.text((meter2[0] + 20, yg + 24), "120 ohm A-B", size=16, fill=WHITE, anchor="lt")

    # Shield to earth at one point only (the adapter end).
    ex = adapter[2] + 40
    c.draw.line([(ex, yg + 20), (ex, 352)], fill=GREY, width=3)
    for i, w in enumerate((28, 18, 8)):
        c.draw.line([(ex - w / 2, 352 + i * 6), (ex + w / 2, 352 + i * 6)], fill=INK, width=3)
    c.text((ex + 22, 356), "shield: to earth at this end only", size=16, anchor="lm")

    c.lines(
        (24, 400),
        [
            "A to A, B to B, GND (COM) to GND along the whole line. Daisy-chain: no star, short stubs.",
            "120 ohm between A and B at the two ends only (adapter jumper or switch, last device).",
            "Bias (fail-safe) once per line, usually a jumper on the adapter.",
            "All devices: one baud rate, same parity and stop bits, different unit ids.",
            "Every device times out? Swap A and B at the adapter (harmless), then scan again.",
        ],
        size=19,
    )
    return c.image


def draw_header_map() -> Image.Image:
    """The whole header of a canary with an Inky pHAT: who uses which pin."""
    leds = LED_SETS["inky"]
    c = Canvas(1000, 960)
    c.text((24, 18), "A canary with an Inky pHAT: what each pin carries", size=26)
    used: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for pin, role in INKY_PINS.items():
        used[pin] = (f"Inky {role}", PURPLE)
    used[1] = ("3V3: sensors + Inky", RED)
    used[2] = ("5V: Inky", RED)
    used[3] = ("SDA: sensors + Inky EEPROM", BLUE)
    used[5] = ("SCL: sensors + Inky EEPROM", YELLOW)
    used[6] = ("GND: sensors", BLACK)
    for colour, gpio in (("red", leds.red), ("amber", leds.amber), ("green", leds.green)):
        used[pin_of_gpio(gpio)] = (f"LED {colour} GPIO{gpio}", LED_COLOURS[colour])
    used[leds.ground_pin] = ("GND: LEDs", BLACK)
    draw_header(
        c,
        x=470,
        y=120,
        rows=range(20),
        used=used,
        caption="Raspberry Pi 40-pin header, seen from above (pin 1: square pad)",
    )
    c.lines(
        (690, 110),
        [
            "Legend",
            "purple: the Inky pHAT",
            "blue, yellow: I2C bus 1",
            "   (sensors, Inky EEPROM)",
            "red: power (3V3, 5V)",
            "black: ground",
            "red, amber, green: LEDs",
            "grey: free",
            "",
            "i2cdetect -y 1 with the",
            "Inky: 12, 50 and 62",
        ],
        size=18,
    )
    c.lines(
        (24, 870),
        [
            "Purple: taken by the Inky pHAT (SPI0 with CE0, and GPIO 17, 27, 22). Do not put LEDs on 11/13/15.",
            "The pHAT covers the header: reach the other pins through a header splitter or a Qwiic SHIM.",
        ],
        size=18,
    )
    return c.image


#: File name -> the function that draws it.
DIAGRAMS: dict[str, Callable[[], Image.Image]] = {
    "wiring-i2c.png": draw_i2c,
    "wiring-leds.png": lambda: draw_leds("plain"),
    "wiring-leds-inky.png": lambda: draw_leds("inky"),
    "wiring-rs485.png": draw_rs485,
    "wiring-header-inky.png": draw_header_map,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Write every diagram into the directory given (default docs/images); exit code 0."""
    args = list(sys.argv[1:] if argv is None else argv)
    target = Path(args[0]) if args else ROOT / "docs" / "images"
    target.mkdir(parents=True, exist_ok=True)
    for name, draw in DIAGRAMS.items():
        path = target / name
        draw().save(path, optimize=True)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
