"""``gateway check``: every start-up failure is one line naming the key path, and all are reported.

Golden cases live in ``tests/cases/check/<name>/{gateway.toml, error.txt, case.toml}``:
``case.toml`` describes the host (see `tests.gateway.check_fixtures`), built under a fake root
with an injected identity, so a permission case fails for the daemon's user even though the
suite runs as root. ``{file}`` in ``error.txt`` stands for the path of the TOML file; an empty
``error.txt`` is a host on which the daemon would start. To add a case, add a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import EXIT_CONFIG, EXIT_OK, main
from gateway.config import load_config
from gateway.preflight import preflight
from tests.gateway.check_fixtures import build_host

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "tests" / "cases" / "check").iterdir())

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="building a case needs chown and mknod")


def test_there_is_a_case_for_every_kind_of_start_up_failure() -> None:
    names = {case.name.split("-")[0] for case in CASES}
    assert {"secret", "tls", "buffer", "panel", "serial", "i2c"} <= names


@needs_root
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_check_case(case: Path, tmp_path: Path) -> None:
    path = case / "gateway.toml"
    expected = (case / "error.txt").read_text().replace("{file}", str(path))
    host = build_host(case, tmp_path / "root")
    problems = preflight(load_config(path), host=host, simulate=not host.sandboxed)
    out = "".join(f"config error: {problem.line(str(path))}\n" for problem in problems)
    assert out == expected
    if not case.name.startswith(("all-", "ok-")):
        assert len(out.splitlines()) == 1, "one start-up failure, one line"


def test_the_command_exits_2_with_one_line_per_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI, on this machine's real host (no fake root): a secret file that is not
    there and a serial port that does not exist."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[site]\nid = "kg"\n'
        f'[mqtt]\nusername = "u"\npassword = {{ file = "{tmp_path}/nope" }}\n'
        f'[buffer]\npath = "{tmp_path}/buffer.sqlite3"\n'
        '[[devices]]\nid = "m"\ndriver = "modbus"\nprofile = "sdm120"\n'
        'transport = { kind = "rtu", port = "/dev/ttyCANARY-TEST" }\n'
    )
    assert main(["check", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"config error: {config}: mqtt.password.file: expected a file holding the secret "
        f"(got {tmp_path}/nope: no such file)"
    )
    # The buffer is outside /var/lib/canary-gateway: the unit could not write it.
    assert err[1].startswith(f"config error: {config}: buffer.path: expected a path under")
    assert err[2].startswith(
        f"config error: {config}: devices[0].transport.port: expected a serial device "
        "(got /dev/ttyCANARY-TEST: no such device"
    )
    assert len(err) == 3
    # --simulate: no unit sandbox, no device nodes; the secret is still needed.
    assert main(["check", "--simulate", "--config", str(config)]) == EXIT_CONFIG
    assert capsys.readouterr().err.splitlines() == err[:1]
    (tmp_path / "nope").write_text("secret\n")
    assert main(["check", "--simulate", "--config", str(config)]) == EXIT_OK
    assert ": ok (site kg, 1 devices on 1 buses; checked for user" in capsys.readouterr().out


@needs_root
def test_the_shipped_example_on_a_bare_machine_and_on_a_prepared_pi(tmp_path: Path) -> None:
    """config/example.toml names three things an installer must provide: the password file, the
    CA file and the I2C bus. On a bare host those are the problems, and the only ones; on a Pi
    prepared as the installer guide says (files root:canary 0640, I2C enabled) there are none."""
    example = load_config(ROOT / "config" / "example.toml")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "case.toml").write_text("")
    problems = preflight(example, host=build_host(bare, tmp_path / "bare-root"))
    assert [(p.key, p.got) for p in problems] == [
        ("mqtt.password.file", "/etc/canary-gateway/mqtt-password: no such file"),
        ("mqtt.tls.ca_file", "/etc/canary-gateway/ca.pem: no such file"),
        ("devices[1].bus", problems[2].got),
    ]
    assert "/dev/i2c-1: no such device" in str(problems[2].got)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "case.toml").write_text(
        'groups = { 998 = "i2c", 990 = "canary" }\n'
        'identity = { user = "canary", uid = 990, gids = [990, 998] }\n'
        '[[pki]]\nca = "/etc/canary-gateway/ca.pem"\n'
        '[[files]]\npath = "/etc/canary-gateway/mqtt-password"\nmode = 0o640\ngid = 990\n'
        '[[nodes]]\npath = "/dev/i2c-1"\nmode = 0o660\ngid = 998\n'
    )
    assert preflight(example, host=build_host(prepared, tmp_path / "prepared-root")) == []
