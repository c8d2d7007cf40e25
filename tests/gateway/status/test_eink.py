"""The e-ink renderer and its refresh policy; the committed README images are up to date."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw

from gateway.status.airquality import Level
from gateway.status.eink import (
    DEMO_CONTENTS,
    SIZES,
    InkyBackend,
    Panel,
    PanelContent,
    PngBackend,
    inky_frame,
    main,
    render,
)
from tests.gateway.status.helpers import FakeClock

ROOT = Path(__file__).resolve().parents[3]
GOOD = DEMO_CONTENTS[0]


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("content", DEMO_CONTENTS, ids=lambda c: c.level.label)
def test_renders_one_bit_images_of_the_panel_size(content: PanelContent, size: str) -> None:
    image = render(content, size)
    assert image.mode == "1" and image.size == SIZES[size]
    black = image.histogram()[0] / (image.width * image.height)
    assert 0.05 < black < 0.6  # something is drawn, and it is not a black slab


def test_each_class_looks_different() -> None:
    images = [render(replace(c, co2=800, pm25=5, message="x"), "250x122") for c in DEMO_CONTENTS]
    for i, a in enumerate(images):
        for b in images[i + 1 :]:
            assert ImageChops.difference(a, b).getbbox() is not None


def test_no_data_and_missing_values_render() -> None:
    render(PanelContent(room="A room with a rather long name indeed", level=None), "250x122")


def test_refreshes_only_when_the_content_changes() -> None:
    clock = FakeClock()
    panel = Panel(
        size="250x122", backend=PngBackend(path=Path("unused")), clock=clock, min_interval=60
    )
    assert panel.update(GOOD) is not None
    assert panel.update(replace(GOOD, time="08:06")) is None  # the clock alone never refreshes
    clock.advance(10)
    assert panel.update(replace(GOOD, co2=640)) is None  # numbers only: rate-limited
    assert (
        panel.update(replace(GOOD, level=Level.MODERATE, message="m")) is not None
    )  # face: at once
    clock.advance(60)
    assert panel.update(replace(GOOD, level=Level.MODERATE, message="m", co2=1010)) is not None
    assert panel.refreshes == 3


def test_png_backend_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "panels" / "ladybird.png"
    backend = PngBackend(path=path)
    backend.show(render(GOOD))
    backend.show(render(DEMO_CONTENTS[1]))
    assert Image.open(path).size == (250, 122)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ladybird.png"]


def test_inky_backend_needs_the_package() -> None:
    try:
        import inky  # type: ignore[import-not-found]  # noqa: F401, PLC0415
    except ImportError:
        with pytest.raises(RuntimeError, match="inky"):
            InkyBackend()
    else:  # pragma: no cover - only where the optional package is installed
        pytest.skip("inky is installed")


def test_committed_readme_images_are_what_the_script_renders(tmp_path: Path) -> None:
    assert main(["--demo", str(tmp_path)]) == 0
    fresh = sorted(tmp_path.iterdir())
    assert len(fresh) == len(DEMO_CONTENTS) * len(SIZES) == 8
    for path in fresh:
        committed = ROOT / "docs" / "images" / path.name
        assert committed.is_file(), (
            f"run: python -m gateway.status.eink --demo docs/images ({path.name} missing)"
        )
        diff = ImageChops.difference(
            Image.open(committed).convert("1"), Image.open(path).convert("1")
        )
        assert diff.getbbox() is None, (
            f"{committed} is stale: rerun python -m gateway.status.eink --demo docs/images"
        )


class InkyLike:
    """The colour indices of Pimoroni's Inky pHAT driver (inky/inky_ssd1608.py: WHITE = 0,
    BLACK = 1), whose set_image keeps a "P" image's values as those indices."""

    WHITE, BLACK = 0, 1


def test_the_inky_frame_uses_the_drivers_own_colour_indices() -> None:
    image = Image.new("1", (250, 122), 1)  # white
    ImageDraw.Draw(image).rectangle((10, 10, 19, 19), fill=0)  # a 10 x 10 black square
    frame = inky_frame(image, (250, 122), InkyLike())
    assert frame.mode == "P"
    values = list(frame.tobytes())
    assert values.count(InkyLike.BLACK) == 100
    assert set(values) == {InkyLike.WHITE, InkyLike.BLACK}
