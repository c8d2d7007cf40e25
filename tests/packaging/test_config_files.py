"""The configuration files the package ships: the starter /etc config and the demo's package data.

The starter config (config/gateway.toml, installed as the conffile /etc/canary-gateway/gateway.toml)
must pass `gateway check` on a fresh machine, also once `gateway check` verifies secret files,
certificates, device nodes and panel paths: so it may name none of them. Its commented device
examples are what an installer uncomments, so each of them must be valid too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_OK, main
from gateway.config import load_config
from gateway.demo import DEMO_CONFIG

ROOT = Path(__file__).resolve().parents[2]
STARTER = ROOT / "config" / "gateway.toml"


def commented_examples(text: str) -> list[str]:
    """The commented ``[[devices]]`` blocks, uncommented, in file order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line == "# [[devices]]":
            current = ["[[devices]]"]
            blocks.append("")
        elif current is not None and line.startswith("# ") and "=" in line:
            current.append(line[2:])
        else:
            if current is not None:
                blocks[-1] = "\n".join(current) + "\n"
            current = None
    if current is not None:
        blocks[-1] = "\n".join(current) + "\n"
    return blocks


def test_starter_config_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(STARTER)]) == EXIT_OK
    assert ": ok (site my-site, 0 devices" in capsys.readouterr().out


def test_starter_config_needs_nothing_a_fresh_machine_lacks() -> None:
    config = load_config(STARTER)
    assert config.mqtt.password is None and config.mqtt.tls is None
    assert config.mqtt.host == "127.0.0.1"
    assert not config.devices and not config.status.rooms
    assert config.influxdb is None
    # The one path it names is the buffer, in the directory the package creates.
    assert config.buffer.path == Path("/var/lib/canary-gateway/buffer.sqlite3")
    live = "\n".join(
        line.split("#", 1)[0] for line in STARTER.read_text(encoding="utf-8").splitlines()
    )
    assert re.findall(r'"(/[^"]*)"', live) == [str(config.buffer.path)]


def test_starter_config_examples_are_valid(tmp_path: Path) -> None:
    text = STARTER.read_text(encoding="utf-8")
    examples = commented_examples(text)
    drivers = {re.search(r'driver = "(\w+)"', block)[1] for block in examples}  # type: ignore[index]
    assert drivers == {"modbus", "scd4x", "pmsa003i"}, examples
    for index, block in enumerate(examples):
        path = tmp_path / f"example-{index}.toml"
        path.write_text(text + "\n" + block, encoding="utf-8")
        assert len(load_config(path).devices) == 1, block


def test_demo_config_is_package_data() -> None:
    """`gateway demo` finds its site next to the package's modules, not in a checkout's config/."""
    assert DEMO_CONFIG.parent == Path(__import__("gateway").__file__).parent
    assert DEMO_CONFIG.is_file()
    assert not (ROOT / "config" / "demo.toml").exists(), "one copy only: gateway/demo.toml"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^gateway = \[.*"demo\.toml".*\]$', pyproject, re.MULTILINE)
    assert load_config(DEMO_CONFIG).site.id == "kg-sunflower"


def test_demo_runs_outside_a_checkout(tmp_path: Path) -> None:
    """`gateway demo` with no --config, started where there is no config/ directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "site 'kg-sunflower' simulated" in result.stdout, output
    assert re.search(r"^\d\d:\d\d:\d\d  b1-main-meter +seq +\d+ ", result.stdout, re.M), output
    assert "Traceback" not in result.stderr, output
