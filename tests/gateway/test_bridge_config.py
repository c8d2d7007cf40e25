"""The bridge's configuration: ``[bridge]`` and the bridge's part of ``[influxdb]``."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigError


def config(bridge: dict[str, Any] | None = None, **influx: Any) -> GatewayConfig:
    return parse_config(
        {
            "site": {"id": "kg"},
            "influxdb": {"url": "http://127.0.0.1:8428", "org": "o", "bucket": "b", **influx},
            "bridge": bridge or {},
        },
        source="gateway.toml",
    )


def test_defaults_hold_acks_for_victoriametrics() -> None:
    options = config().bridge
    assert (options.ack_delay, options.read_back, options.sites) == (15.0, True, [])
    assert config().influxdb is not None and config().influxdb.auth == "token"  # type: ignore[union-attr]


def test_share_group_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as info:
        config({"share_group": "writers"})
    message = str(info.value)
    assert message.startswith("gateway.toml: bridge.share_group: ")
    assert "Mosquitto does not persist them" in message
    assert "its own list of sites" in message
    assert len(message.splitlines()) == 1


def test_sites_are_identifiers_listed_once() -> None:
    assert config({"sites": ["kg-a", "kg-b"]}).bridge.sites == ["kg-a", "kg-b"]
    with pytest.raises(ConfigError, match=r"bridge\.sites: each site may be listed once"):
        config({"sites": ["kg-a", "kg-a"]})
    with pytest.raises(ConfigError, match=r"bridge\.sites\[0\]: expected an identifier"):
        config({"sites": ["KG A"]})


def test_read_back_needs_an_ack_delay() -> None:
    assert config({"ack_delay": 0, "read_back": False}).bridge.ack_delay == 0
    with pytest.raises(ConfigError, match=r"bridge: read_back checks the points once ack_delay"):
        config({"ack_delay": 0})
    with pytest.raises(ConfigError, match=r"bridge\.ack_delay: expected a number <= 600"):
        config({"ack_delay": 601})


def test_basic_auth_is_a_choice_of_influxdb_auth() -> None:
    assert config(auth="basic").influxdb.auth == "basic"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"influxdb\.auth: expected one of 'token' or 'basic'"):
        config(auth="bearer")
