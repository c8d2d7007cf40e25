"""What a reload must do for a given change (gateway/reload.py `plan`)."""

from __future__ import annotations

from typing import Any

from gateway.config import GatewayConfig, parse_config
from gateway.reload import plan


def config(**changes: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "site": {"id": "kg"},
        "mqtt": {"host": "127.0.0.1"},
        "influxdb": {"url": "http://127.0.0.1:8428", "org": "o", "bucket": "b"},
        "devices": [
            {
                "id": "m1",
                "driver": "modbus",
                "profile": "sdm120",
                "unit_id": 1,
                "transport": {"kind": "tcp", "host": "10.0.0.1", "port": 502},
            },
            {
                "id": "m2",
                "driver": "modbus",
                "profile": "sdm120",
                "unit_id": 2,
                "transport": {"kind": "tcp", "host": "10.0.0.1", "port": 502},
            },
            {"id": "co2", "driver": "scd4x", "bus": "/dev/i2c-1"},
        ],
    }
    for key, value in changes.items():
        data[key] = value
    return parse_config(data, source="test")


def test_an_identical_file_changes_nothing() -> None:
    assert plan(config(), config()).unchanged


def test_a_device_change_restarts_only_its_bus() -> None:
    new = config()
    devices = [*new.devices]
    devices[1] = devices[1].model_copy(update={"interval": 2.0})
    change = plan(config(), new.model_copy(update={"devices": devices}))
    assert change.buses == ("modbus-tcp://10.0.0.1:502",) and not change.restart


def test_adding_and_disabling_devices_start_and_stop_buses() -> None:
    old = config()
    devices = [d.model_copy(update={"enabled": d.id != "co2"}) for d in old.devices]
    assert plan(old, old.model_copy(update={"devices": devices})).buses == ("i2c:/dev/i2c-1",)


def test_other_sections_restart_but_bridge_only_sections_do_not() -> None:
    assert plan(config(), config(mqtt={"host": "127.0.0.2"})).sections == ("mqtt",)
    bridge_only = config(
        influxdb={"url": "http://10.0.0.9:8428", "org": "o", "bucket": "b"},
        bridge={"ack_delay": 3},
    )
    assert plan(config(), bridge_only).unchanged


def test_with_rooms_an_interval_the_alarm_rules_use_restarts_the_daemon() -> None:
    from gateway.status.engine import inputs  # noqa: PLC0415

    rooms = {"rooms": [{"id": "r", "name": "R", "devices": ["co2"]}]}
    old = config(status=rooms)
    devices = [d.model_copy(update={"interval": 30.0}) if d.id == "co2" else d for d in old.devices]
    new = old.model_copy(update={"devices": devices})
    assert plan(old, new, watched=inputs).restart, "the silent alarm's limit comes from it"
    # A transport setting the rules do not read: only the bus.
    devices = [d.model_copy(update={"timeout": 1.0}) if d.id == "m1" else d for d in old.devices]
    change = plan(old, old.model_copy(update={"devices": devices}), watched=inputs)
    assert not change.restart and change.buses == ("modbus-tcp://10.0.0.1:502",)
    # Without rooms there is no status service: an interval is the bus's alone.
    plain = config()
    devices = [d.model_copy(update={"interval": 30.0}) for d in plain.devices]
    assert not plan(plain, plain.model_copy(update={"devices": devices}), watched=inputs).restart
