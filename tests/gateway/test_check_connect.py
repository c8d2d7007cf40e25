"""``gateway check --connect`` against a real Mosquitto that wants a password (and one that wants
TLS client certificates), with the demo site's devices from their simulators.

Pinned: the broker line says the CONNACK was accepted, or names paho's reason and code when the
login is refused, or the TLS error when the handshake fails; one progress line per device in
file order, "ok (N values, T ms)" or the fault class and message; exit 0 only when everything
answered, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import getpass
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import EXIT_FAILURE, EXIT_OK, main
from tests.servers import ServerProcess, find_binary, free_port, port_open
from tests.tls import make_pki, password_file, secure_mosquitto

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[ServerProcess]:
    """Mosquitto on plain TCP, no anonymous access, user kg-test / password "s3cret"."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    passwords = password_file(workdir / "passwords", {"kg-test": "s3cret"})
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        f"user {getpass.getuser()}\npersistence false\nlog_dest file {workdir / 'broker.log'}\n"
    )
    binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
    server = ServerProcess(
        "mosquitto", [binary, "-c", str(conf)], port, workdir, lambda s: port_open(s.port)
    )
    server.start()
    yield server
    server.stop()


def _demo(tmp_path: Path, mqtt: str) -> Path:
    """gateway/demo.toml with its own [mqtt] table and its files under ``tmp_path``."""
    text = (ROOT / "gateway" / "demo.toml").read_text()
    text = text.replace('[mqtt]\nhost = "127.0.0.1"\nport = 1883\ntopic_prefix = "canary"\n', mqtt)
    text = text.replace("/tmp/canary-gateway-demo", str(tmp_path / "demo"))
    assert mqtt in text
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def test_connect_reaches_the_broker_and_every_simulated_device(
    tmp_path: Path, password_broker: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = _demo(
        tmp_path,
        f'[mqtt]\nhost = "127.0.0.1"\nport = {password_broker.port}\nusername = "kg-test"\n'
        f'password = {{ file = "{tmp_path / "pw"}" }}\n',
    )
    assert main(["check", "--connect", "--simulate", "--config", str(config)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(
        f"mqtt 127.0.0.1:{password_broker.port} (user kg-test) ... ok (CONNACK accepted, "
    )
    devices = lines[2:-1]
    ids = [
        "b1-main-meter", "b1-aircon-meter", "b1-room-ladybird", "b1-room-ladybird-pm",
        "b1-pv-inverter", "b1-water-meter", "b2-main-meter", "b2-aircon-meter",
        "b2-room-hedgehog", "b2-room-hedgehog-pm", "b2-water-meter",
    ]  # fmt: skip
    assert [line.split(" ... ")[0] for line in devices] == [
        f"[{n}/11] {device}" for n, device in enumerate(ids, start=1)
    ]
    assert re.fullmatch(r"\[1/11\] b1-main-meter \.\.\. ok \(14 values, \d+ ms\)", devices[0])
    assert re.fullmatch(r"\[3/11\] b1-room-ladybird \.\.\. ok \(3 values, \d+ ms\)", devices[2])
    assert "values withheld during its 30 s warm-up" in devices[3]
    assert all(" ... ok (" in line for line in devices)
    assert lines[-1] == "all 12 reachable"


def _site(tmp_path: Path, mqtt: str, devices: str = "") -> Path:
    path = tmp_path / "site.toml"
    buffer = tmp_path / "buffer.sqlite3"
    path.write_text(f'[site]\nid = "kg"\n{mqtt}[buffer]\npath = "{buffer}"\n{devices}')
    return path


def test_a_refused_login_names_the_reason_code_and_exits_1(
    tmp_path: Path, password_broker: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("wrong\n")
    mqtt = (
        f'[mqtt]\nport = {password_broker.port}\nusername = "kg-test"\n'
        f'password = {{ file = "{tmp_path / "pw"}" }}\n'
    )
    config = _site(tmp_path, mqtt)
    assert main(["check", "--connect", "--simulate", "--config", str(config)]) == EXIT_FAILURE
    lines = capsys.readouterr().out.splitlines()
    # Mosquitto answers MQTT 3.1.1 return code 5; paho reports it as MQTT 5's 135.
    assert lines[1] == (
        f"mqtt 127.0.0.1:{password_broker.port} (user kg-test) ... "
        "refused the connection: Not authorized (reason code 135)"
    )
    assert lines[-1] == "1 of 1 failed"


def test_a_device_that_does_not_answer_is_its_fault_class_and_message(
    tmp_path: Path, password_broker: ServerProcess
) -> None:
    """The online part alone (`check_online`), without the simulators: a meter at a port where
    nothing listens; the broker line and the device line each say what happened."""
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.preflight.connect import check_online  # noqa: PLC0415

    (tmp_path / "pw").write_text("s3cret\n")
    mqtt = (
        f'[mqtt]\nport = {password_broker.port}\nusername = "kg-test"\n'
        f'password = {{ file = "{tmp_path / "pw"}" }}\n'
    )
    devices = (
        '[[devices]]\nid = "meter"\ndriver = "modbus"\nprofile = "sdm120"\ntimeout = 0.5\n'
        f'transport = {{ kind = "tcp", host = "127.0.0.1", port = {free_port()} }}\n'
    )
    out = io.StringIO()
    code = asyncio.run(
        check_online(load_config(_site(tmp_path, mqtt, devices)), simulate=False, out=out)
    )
    lines = out.getvalue().splitlines()
    assert code == EXIT_FAILURE
    assert " ... ok (CONNACK accepted, " in lines[0]
    assert lines[1].startswith("[1/1] meter ... timeout: ")
    assert lines[2] == "1 of 2 failed"


def test_tls_with_a_client_certificate_and_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = secure_mosquitto(workdir, pki, {"kg-test": "s3cret"})
    broker.start()
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        login = (
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "kg-test"\n'
            f'password = {{ file = "{tmp_path / "pw"}" }}\n'
        )
        good = _site(
            tmp_path,
            login + f'tls = {{ ca_file = "{pki.ca_cert}", cert_file = "{pki.client_cert}", '
            f'key_file = "{pki.client_key}" }}\n',
        )
        assert main(["check", "--connect", "--simulate", "--config", str(good)]) == EXIT_OK
        lines = capsys.readouterr().out.splitlines()
        assert "(user kg-test, TLS) ... ok (CONNACK accepted" in lines[1]
        no_cert = _site(tmp_path, login + f'tls = {{ ca_file = "{pki.ca_cert}" }}\n')
        assert main(["check", "--connect", "--simulate", "--config", str(no_cert)]) == EXIT_FAILURE
        line = capsys.readouterr().out.splitlines()[1]
        # TLS 1.3: the broker checks the client certificate after the client's handshake.
        assert line == (
            f"mqtt 127.0.0.1:{broker.port} (user kg-test, TLS) ... the broker closed the "
            "connection before its CONNACK (a missing or unknown client certificate? see the "
            "broker's log)"
        )
        wrong_ca = _site(tmp_path, login + f'tls = {{ ca_file = "{pki.client_cert}" }}\n')
        assert main(["check", "--connect", "--simulate", "--config", str(wrong_ca)]) == EXIT_FAILURE
        line = capsys.readouterr().out.splitlines()[1]
        assert "cannot connect: certificate verify failed" in line
    finally:
        broker.stop()
