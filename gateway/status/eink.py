"""The e-ink panel: a face a five-year-old understands, plus the numbers staff need, in 1 bit.

`render` draws a `PanelContent` for the common small panels (250x122 and 296x128) with Pillow
primitives and Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Pillow ≥
10.1), so nothing has to be installed or downloaded. Left: a big face (happy, neutral, sad; for an
alarm an inverted, shouting face); right: room, time, CO2 large, temperature, humidity, PM2.5 and
a short sentence for the teacher.

An e-ink panel wears with every refresh and flickers while it refreshes, so `Panel` refreshes
only when what it would show changes: it compares `PanelContent.key` (everything but the clock
time) with what it showed last. A change of face or message is shown at once; a change of numbers
only is shown at most every ``min_interval`` seconds. The time on the panel is the time of the
values shown, so it may lag the wall clock; that is the honest reading of an e-ink display.

Backends: `PngBackend` (simulation, README images, a kiosk browser) and `InkyBackend` (Pimoroni
Inky pHAT / wHAT, imported only when the optional ``inky`` package is installed).

Run ``python -m gateway.status.eink --demo DIR`` to write one PNG per class and panel size (the
images in docs/images are made that way).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageDraw, ImageFont

from gateway.status.airquality import Level

#: Supported panels, as configured (``[status.rooms.panel] size``) -> pixels.
SIZES: dict[str, tuple[int, int]] = {"250x122": (250, 122), "296x128": (296, 128)}

BLACK, WHITE = 0, 1

#: What the face and the sentence say for each class (``None``: no data yet).
MESSAGES: dict[Level | None, str] = {
    Level.GOOD: "Fresh air!",
    Level.MODERATE: "Air the room soon",
    Level.POOR: "Open the windows!",
    Level.ALARM: "ALARM",
    None: "Waiting for data",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelContent:
    """Everything a panel shows, already rounded the way it is printed.

    ``message`` is the sentence under the numbers (`MESSAGES`, or an alarm's reason); ``time``
    is the local time of the values ("10:42"); ``level`` ``None`` means no data yet.
    """

    room: str
    level: Level | None
    co2: int | None = None
    temperature: float | None = None
    humidity: int | None = None
    pm25: int | None = None
    message: str = ""
    time: str = ""

    def key(self) -> tuple[Any, ...]:
        """What decides whether the panel must refresh: everything except ``time``."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "time")

    def face_key(self) -> tuple[Any, ...]:
        """The part that is refreshed at once when it changes (face, sentence, room)."""
        return (self.room, self.level, self.message)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> tuple[str, Any]:
    """The largest font up to ``size`` (not below 10) in which ``text`` fits ``width``; else cut."""
    for candidate in range(size, 9, -1):
        font = _font(candidate)
        if draw.textlength(text, font=font) <= width:
            return text, font
    font = _font(10)
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…", font


def _draw_face(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], level: Level | None
) -> None:
    """A round face in ``box``: smile, straight mouth, frown, or an inverted shouting face."""
    x0, y0, x1, y1 = box
    d = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    alarm = level is Level.ALARM
    ink, paper = (WHITE, BLACK) if alarm else (BLACK, WHITE)
    line = max(3, d // 28)
    draw.ellipse(box, fill=paper, outline=BLACK, width=line)
    if level is None:  # no data: a sleeping face, closed eyes and a small mouth
        for ex in (cx - d * 0.2, cx + d * 0.2):
            draw.arc(
                (ex - d * 0.09, cy - d * 0.2, ex + d * 0.09, cy - d * 0.02),
                20,
                160,
                fill=ink,
                width=line,
            )
        draw.ellipse(
            (cx - d * 0.05, cy + d * 0.17, cx + d * 0.05, cy + d * 0.25), outline=ink, width=line
        )
        return
    eye_r = d * 0.065
    eye_y = cy - d * 0.14
    for ex in (cx - d * 0.18, cx + d * 0.18):
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=ink)
    mouth_w = d * 0.26
    if level is Level.GOOD:
        draw.arc(
            (cx - mouth_w, cy - d * 0.12, cx + mouth_w, cy + d * 0.3),
            25,
            155,
            fill=ink,
            width=line + 1,
        )
    elif level is Level.MODERATE:
        my = cy + d * 0.2
        draw.line((cx - mouth_w * 0.8, my, cx + mouth_w * 0.8, my), fill=ink, width=line + 1)
    elif level is Level.POOR:
        draw.arc(
            (cx - mouth_w, cy + d * 0.14, cx + mouth_w, cy + d * 0.5),
            205,
            335,
            fill=ink,
            width=line + 1,
        )
        for ex, sign in ((cx - d * 0.18, -1), (cx + d * 0.18, 1)):  # sad eyebrows
            draw.line(
                (
                    ex - d * 0.09,
                    eye_y - d * 0.14 - sign * d * 0.04,
                    ex + d * 0.09,
                    eye_y - d * 0.14 + sign * d * 0.04,
                ),
                fill=ink,
                width=line,
            )
    else:  # alarm: wide-open mouth and raised brows
        draw.ellipse((cx - d * 0.13, cy + d * 0.08, cx + d * 0.13, cy + d * 0.34), fill=ink)
        for ex, sign in ((cx - d * 0.18, -1), (cx + d * 0.18, 1)):
            draw.line(
                (
                    ex - d * 0.09,
                    eye_y - d * 0.15 - sign * d * 0.04,
                    ex + d * 0.09,
                    eye_y - d * 0.15 + sign * d * 0.04,
                ),
                fill=ink,
                width=line,
            )


def _rich(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, **kw: Any
) -> float:
    """Draw ``text`` in the built-in font, which lacks ``₂``, ``³`` and ``µ``: those are drawn as
    a lowered small "2", a raised small "3", and a "u" with a descending stroke. Returns the x
    where the text ends."""
    x, y = xy
    font, script = _font(size), _font(max(8, round(size * 0.7)))
    fill = kw.get("fill", BLACK)
    for ch in re.split(r"([₂³µ])", text):
        if not ch:
            continue
        if ch in "₂³":
            dy = size * 0.45 if ch == "₂" else -size * 0.05
            digit = "2" if ch == "₂" else "3"
            draw.text((x, y + dy), digit, font=script, fill=fill)
            x += draw.textlength(digit, font=script)
        elif ch == "µ":
            left, _top, _right, bottom = draw.textbbox((x, y), "u", font=font)
            draw.text((x, y), "u", font=font, fill=fill)
            stroke = max(1, size // 12)
            draw.rectangle(
                (left, bottom - size * 0.3, left + stroke - 1, bottom + size * 0.2), fill=fill
            )
            x += draw.textlength("u", font=font)
        else:
            draw.text((x, y), ch, font=font, **kw)
            x += draw.textlength(ch, font=font)
    return x


def _number(value: float | None, fmt: str) -> str:
    return "--" if value is None else fmt.format(value)


def render(content: PanelContent, size: str = "250x122") -> Image.Image:
    """Draw ``content`` on a 1-bit image of panel ``size`` (a key of `SIZES`)."""
    width, height = SIZES[size]
    image = Image.new("1", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: 1-bit pixels, exactly as the panel shows them
    margin = 4
    face = height - 2 * margin
    _draw_face(draw, (margin, margin, margin + face, margin + face), content.level)

    x = margin + face + 8
    column = width - x - margin
    scale = height / 122
    # Room name and time on the first line.
    time_font = _font(round(12 * scale))
    time_w = draw.textlength(content.time, font=time_font)
    room, room_font = _fit(draw, content.room, round(13 * scale), int(column - time_w - 6))
    draw.text((x, margin), room, font=room_font, fill=BLACK)
    draw.text((width - margin - time_w, margin), content.time, font=time_font, fill=BLACK)
    y = margin + round(17 * scale)
    draw.line((x, y - 3, width - margin, y - 3), fill=BLACK, width=1)

    # CO2, large, with its unit stacked beside it.
    co2 = _number(content.co2, "{:d}")
    big = _font(round(34 * scale))
    draw.text((x, y), co2, font=big, fill=BLACK, stroke_width=1, stroke_fill=BLACK)
    ux = x + draw.textlength(co2, font=big) + 6
    small = _font(round(12 * scale))
    draw.text((ux, y + round(6 * scale)), "ppm", font=small, fill=BLACK)
    _rich(draw, (ux, y + round(20 * scale)), "CO₂", round(12 * scale), fill=BLACK)
    y += round(40 * scale)

    body = _font(round(14 * scale))
    climate = (
        f"{_number(content.temperature, '{:.1f}')} °C   {_number(content.humidity, '{:d}')} %RH"
    )
    draw.text((x, y), climate, font=body, fill=BLACK)
    y += round(17 * scale)
    if content.pm25 is not None:
        _rich(draw, (x, y), f"PM2.5  {content.pm25} µg/m³", round(14 * scale), fill=BLACK)

    # The sentence for the teacher, on a black bar when the class is poor or an alarm.
    bar_h = round(20 * scale)
    bar_y = height - margin - bar_h
    strong = content.level in (Level.POOR, Level.ALARM)
    message, message_font = _fit(draw, content.message, round(14 * scale), column - 8)
    if strong:
        draw.rectangle((x - 2, bar_y, width - margin, height - margin), fill=BLACK)
    draw.text(
        (x + 2, bar_y + bar_h / 2),
        message,
        font=message_font,
        fill=WHITE if strong else BLACK,
        anchor="lm",
    )
    return image


class PanelBackend(Protocol):
    """Where a rendered image goes. ``show`` is blocking (file or SPI I/O): call it off the loop."""

    def show(self, image: Image.Image) -> None: ...


class PngBackend:
    """Writes each refresh to ``path`` atomically (write a sibling, then rename)."""

    def __init__(self, *, path: Path) -> None:
        self.path = path

    def show(self, image: Image.Image) -> None:
        """Replace the PNG; a reader never sees a half-written file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        image.save(partial, format="PNG")
        os.replace(partial, self.path)


class InkyBackend:
    """A Pimoroni Inky panel found by ``inky.auto`` (needs the optional ``inky`` package).

    Raises `RuntimeError` at construction if the package is not installed, so a misconfigured
    room is reported at start-up and not on the first refresh.
    """

    def __init__(self) -> None:
        try:
            from inky.auto import auto  # type: ignore[import-not-found]  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError("panel backend 'inky' needs the 'inky' package installed") from exc
        self._display: Any = auto()

    def show(self, image: Image.Image) -> None:
        """Send the image to the panel (a full refresh takes a few seconds on e-ink)."""
        width, height = self._display.resolution
        self._display.set_image(inky_frame(image, (width, height), self._display))
        self._display.show()


def inky_frame(image: Image.Image, size: tuple[int, int], display: Any) -> Image.Image:
    """``image`` as the "P" image an Inky driver takes: its pixel values are the driver's own
    colour indices (``display.WHITE``, ``display.BLACK``: 0 and 1 on the pHAT), used as they are.
    A plain ``convert("P")`` gives 0 for black and 255 for white, which the driver reads as
    white and as "not black": a blank panel."""
    grey = image.convert("L").resize(size)
    black, white = int(display.BLACK), int(display.WHITE)
    lut = bytes(black if value < 128 else white for value in range(256))
    return Image.frombytes("P", size, grey.tobytes().translate(lut))


class Panel:
    """Decides when to refresh: only when the content's `PanelContent.key` changed.

    ``clock`` is monotonic seconds (injected for tests). ``update`` returns the image to show, or
    ``None`` when the panel already shows this content (or only numbers changed, less than
    ``min_interval`` seconds after the last refresh); the caller then passes the image to the
    backend, off the event loop.
    """

    def __init__(
        self,
        *,
        size: str,
        backend: PanelBackend,
        clock: Callable[[], float],
        min_interval: float = 60.0,
    ) -> None:
        self.size = size
        self.backend = backend
        self._clock = clock
        self._min_interval = min_interval
        self._shown: PanelContent | None = None
        self._shown_at = 0.0
        self.refreshes = 0

    def update(self, content: PanelContent) -> Image.Image | None:
        """The image to show for ``content`` now, or ``None`` if no refresh is due."""
        shown = self._shown
        if shown is not None:
            if shown.key() == content.key():
                return None
            numbers_only = shown.face_key() == content.face_key()
            if numbers_only and self._clock() - self._shown_at < self._min_interval:
                return None
        self._shown, self._shown_at = content, self._clock()
        self.refreshes += 1
        return render(content, self.size)


#: The contents of the README images: one per class.
DEMO_CONTENTS: tuple[PanelContent, ...] = (
    PanelContent(
        room="Ladybird room",
        level=Level.GOOD,
        co2=612,
        temperature=21.4,
        humidity=42,
        pm25=6,
        message=MESSAGES[Level.GOOD],
        time="08:05",
    ),
    PanelContent(
        room="Ladybird room",
        level=Level.MODERATE,
        co2=1180,
        temperature=22.3,
        humidity=48,
        pm25=9,
        message=MESSAGES[Level.MODERATE],
        time="09:20",
    ),
    PanelContent(
        room="Ladybird room",
        level=Level.POOR,
        co2=1530,
        temperature=23.1,
        humidity=52,
        pm25=12,
        message=MESSAGES[Level.POOR],
        time="09:40",
    ),
    PanelContent(
        room="Ladybird room",
        level=Level.ALARM,
        co2=1260,
        temperature=22.8,
        humidity=50,
        pm25=88,
        message="ALARM: fine dust",
        time="11:55",
    ),
)


def write_demo(directory: Path) -> list[Path]:
    """Write ``<class>-<size>.png`` for every demo content and panel size; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for content in DEMO_CONTENTS:
        assert content.level is not None
        for size in SIZES:
            path = directory / f"panel-{content.level.label}-{size}.png"
            render(content, size).save(path, format="PNG", optimize=True)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.status.eink --demo DIR``: write the README images."""
    parser = argparse.ArgumentParser(prog="python -m gateway.status.eink", description=main.__doc__)
    parser.add_argument("--demo", type=Path, required=True, metavar="DIR", help="output directory")
    args = parser.parse_args(argv)
    for path in write_demo(args.demo):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
