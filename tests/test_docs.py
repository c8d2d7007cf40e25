"""docs/install.md against the code it describes.

- every ``gateway ...`` command line in its code blocks parses with the real argument parser,
  `gateway.cli._parser`; a ``gateway ...`` mentioned as inline code in the prose (often just a
  subcommand's name) names a real subcommand with real options;
- it walks the commissioning flow in order: scan, read, check, check --connect, enable;
- every relative link and image exists, and every ``#anchor`` is a heading of its target;
- its TOML blocks together are a valid configuration, and every device it reads is in it;
- every "GPIOn (pin m)" in the prose, and the I2C table, agree with the pin table the wiring
  diagrams are drawn from, and that table is a plausible 40-pin header;
- the committed wiring diagrams are what ``tools/draw_wiring.py`` draws.

An installer copies these lines by hand onto a Pi on a roof: a command that does not parse there
is a site visit.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageChops

from gateway.cli import _parser
from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "install.md"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}


@cache
def _draw_wiring() -> ModuleType:
    spec = importlib.util.spec_from_file_location("draw_wiring", ROOT / "tools" / "draw_wiring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def prose(text: str) -> str:
    """``text`` with fenced code blocks and HTML comments blanked (line numbers kept)."""

    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match.group(0))

    return re.sub(r"<!--.*?-->", blank, FENCE.sub(blank, text), flags=re.DOTALL)


def block_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for every ``gateway ...`` line of a fenced shell block (```sh: what the
    reader types; a plain fence is output, which may start with the word "gateway")."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        if block.group(1) not in {"sh", "bash", "console"}:
            continue
        first = line_of(text, block.start(2))
        for i, line in enumerate(block.group(2).splitlines()):
            stripped = line.strip().removeprefix("$ ").removeprefix("sudo ")
            if stripped.startswith("gateway "):
                found.append((first + i, stripped))
    return found


def inline_mentions(text: str) -> list[tuple[int, str]]:
    """(line, code) for every inline code span of the prose that starts with ``gateway ``."""
    body = prose(text)
    found = []
    for span in INLINE.finditer(body):
        code = span.group(1).strip().removeprefix("sudo ")
        if code.startswith("gateway "):
            found.append((line_of(body, span.start()), code))
    return found


def argv_of(command: str) -> list[str]:
    """The arguments after ``gateway``, up to a shell operator or comment."""
    words = shlex.split(command, comments=True)
    assert words[0] == "gateway", command
    args: list[str] = []
    for word in words[1:]:
        if word in SHELL_OPERATORS:
            break
        args.append(word)
    return args


def parse(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    try:
        return _parser().parse_args(args)
    except SystemExit as exc:
        if exc.code in (0, None):  # --version, --help
            return None
        raise AssertionError(
            f"rejected: {capsys.readouterr().err.strip().splitlines()[-1]}"
        ) from exc


def subcommand_options(args: list[str]) -> tuple[list[str], set[str]]:
    """The subcommand chain ``args`` names (e.g. ["calibrate", "co2"]) and the options valid
    along it; raises AssertionError for a subcommand that does not exist."""
    parser: argparse.ArgumentParser = _parser()
    chain: list[str] = []
    options = set(parser._option_string_actions)
    for word in args:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if word.startswith("-") or not subparsers:
            continue
        choices = subparsers[0].choices
        assert word in choices, f"no subcommand {' '.join([*chain, word])!r}"
        parser = choices[word]
        chain.append(word)
        options |= set(parser._option_string_actions)
    return chain, options


COMMANDS = sorted(block_commands(GUIDE.read_text()))
MENTIONS = sorted(inline_mentions(GUIDE.read_text()))


@pytest.mark.parametrize(
    "command", [c for _, c in COMMANDS], ids=[f"line{n}: {c}" for n, c in COMMANDS]
)
def test_every_gateway_command_line_parses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parse(argv_of(command), capsys)


@pytest.mark.parametrize(
    "mention", [c for _, c in MENTIONS], ids=[f"line{n}: {c}" for n, c in MENTIONS]
)
def test_every_gateway_command_in_the_prose_exists(mention: str) -> None:
    args = argv_of(mention)
    chain, options = subcommand_options(args)
    assert chain, f"{mention!r} names no subcommand"
    unknown = [
        w.split("=")[0] for w in args if w.startswith("-") and w.split("=")[0] not in options
    ]
    assert not unknown, f"{mention!r}: no such option {unknown} for gateway {' '.join(chain)}"


def test_the_guide_walks_the_commissioning_flow_in_order() -> None:
    text = GUIDE.read_text()
    commands = [argv_of(c) for _, c in COMMANDS]
    assert len(commands) >= 10, "the command extraction found almost nothing"
    steps = [
        ("gateway scan --serial", lambda a: a[:1] == ["scan"] and "--serial" in a),
        ("gateway read", lambda a: a[:1] == ["read"]),
        ("gateway check", lambda a: a[:1] == ["check"] and "--connect" not in a),
        ("gateway check --connect", lambda a: a[:1] == ["check"] and "--connect" in a),
        ("gateway status", lambda a: a[:1] == ["status"]),
    ]
    lines = []
    for name, wanted in steps:
        at = [n for (n, c), a in zip(COMMANDS, commands, strict=True) if wanted(a)]
        assert at, f"the guide never shows {name}"
        lines.append((min(at), name))
    enable = line_of(text, text.index("sudo systemctl enable --now gateway"))
    lines.insert(4, (enable, "systemctl enable --now gateway"))
    assert lines == sorted(lines), f"the flow is out of order: {lines}"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for match in re.finditer(r"^#{1,6} (.+)$", prose(path.read_text()), re.MULTILINE):
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_every_relative_link_and_image_exists() -> None:
    body = prose(GUIDE.read_text())
    targets = [(line_of(body, m.start()), m.group(1)) for m in LINK.finditer(body)]
    assert len(targets) >= 10, "the link extraction found almost nothing"
    problems = []
    for line, target in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        path = (GUIDE.parent / name).resolve() if name else GUIDE
        if not path.is_file():
            problems.append(f"line {line}: {target}: no such file")
        elif anchor and anchor not in anchors(path):
            problems.append(f"line {line}: {target}: no heading #{anchor} in {path.name}")
    assert not problems, "\n".join(problems)


def test_every_wiring_image_is_in_the_guide() -> None:
    shown = set(re.findall(r"images/(wiring-[\w-]+\.png)", GUIDE.read_text()))
    assert shown == set(_draw_wiring().DIAGRAMS)


def test_the_guides_configuration_is_valid_and_has_every_device_it_reads(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    blocks = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "toml"]
    assert blocks, "the guide shows no configuration"
    path = tmp_path / "gateway.toml"
    header = '[site]\nid = "kg-sunflower"\n\n[mqtt]\nhost = "mqtt.example-city.org"\n\n'
    path.write_text(header + "\n".join(blocks))
    config = load_config(path)
    ids = {device.id for device in config.devices}
    read = [argv_of(c) for _, c in COMMANDS if argv_of(c)[:1] == ["read"]]
    assert read
    for args in read:
        device = args[-1]
        if device.isupper():  # a placeholder: gateway read --config FILE DEVICE
            continue
        assert device in ids, f"the guide reads {device!r}, which its configuration lacks"
    leds = {(r.led.red, r.led.amber, r.led.green) for r in config.status.rooms if r.led}
    drawn = {(s.red, s.amber, s.green) for s in _draw_wiring().LED_SETS.values()}
    assert leds and leds <= drawn, f"the guide configures LEDs {leds}, the diagrams show {drawn}"


def test_pin_numbers_in_the_guide_agree_with_the_pin_table() -> None:
    wiring = _draw_wiring()
    body = prose(GUIDE.read_text())
    claims = re.findall(r"GPIO(\d+) \(pin (\d+)\)", body)
    assert len(claims) >= 3
    for gpio, pin in claims:
        assert wiring.pin_of_gpio(int(gpio)) == int(pin), f"GPIO{gpio} is not pin {pin}"
    rows = re.findall(r"^\| (\d+) \| (\w+)[^|]*\| (\w+) \|$", body, re.MULTILINE)
    assert {int(pin): (signal, colour) for pin, signal, colour in rows} == wiring.I2C_PINS


def test_the_pin_table_is_a_40_pin_header() -> None:
    header = _draw_wiring().HEADER
    assert sorted(header) == list(range(1, 41))
    gpios = sorted(n for _label, n in header.values() if n is not None)
    assert gpios == list(range(28)), "every BCM GPIO 0-27 exactly once"
    by_name = {
        name: sorted(p for p, (label, _) in header.items() if label == name)
        for name in ("GND", "3V3", "5V")
    }
    # Pinout.xyz: ground 6, 9, 14, 20, 25, 30, 34, 39; 3V3 1, 17; 5V 2, 4.
    assert by_name == {"GND": [6, 9, 14, 20, 25, 30, 34, 39], "3V3": [1, 17], "5V": [2, 4]}
    for pin, (label, gpio) in header.items():
        assert gpio is None or label.startswith(f"GPIO{gpio}"), pin


def test_committed_wiring_images_are_what_the_script_draws(tmp_path: Path) -> None:
    wiring = _draw_wiring()
    assert wiring.main([str(tmp_path)]) == 0
    for name in wiring.DIAGRAMS:
        committed = ROOT / "docs" / "images" / name
        assert committed.is_file(), f"run: python tools/draw_wiring.py ({name} missing)"
        with Image.open(committed) as old, Image.open(tmp_path / name) as new:
            assert old.size == new.size, f"{name} is stale: rerun python tools/draw_wiring.py"
            diff = ImageChops.difference(old.convert("RGB"), new.convert("RGB"))
            assert diff.getbbox() is None, f"{name} is stale: rerun python tools/draw_wiring.py"
