"""The bridge's view of the retained device descriptions (``P/S/devices/D``), for payload v2.

A v2 telemetry message carries no units; the store's points do (tag ``unit``), so the bridge
needs each device's description before it can store its readings. Descriptions are read by a
client of their own with a clean session, not by the bridge's persistent session: after a
bridge restart the broker first delivers the persistent session's queued telemetry, and it
would send the retained descriptions only behind that queue, possibly never if the held
telemetry fills the in-flight window. A clean session gets the retained messages at once on
every subscription, whatever the telemetry session holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from gateway.config import MqttConfig
from gateway.mqtt_client import ConnectionReporter, LoopBridge, make_client, reason_text
from gateway.telemetry import DeviceDescription, TelemetryError, decode_device, devices_filter

log = logging.getLogger(__name__)


class DeviceDirectory:
    """Units per (site, device) from the descriptions; ``on_change(site, device)`` is called on
    the event loop after a description arrived (or was removed)."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        client_id: str,
        sites: list[str],
        on_change: Callable[[str, str], None],
    ) -> None:
        self._config = config
        self._client_id = client_id
        prefix = config.topic_prefix
        self._prefix = prefix
        self._filters = [devices_filter(prefix, s) for s in sites] or [devices_filter(prefix)]
        self._on_change = on_change
        self._descriptions: dict[tuple[str, str], DeviceDescription] = {}
        self._invalid_logged: set[str] = set()
        self._report = ConnectionReporter(logger=log, host=config.host, port=config.port)
        self._client: mqtt.Client | None = None

    def units(self, site: str, device: str) -> dict[str, str] | None:
        """metric -> unit of the device's current description, or None if none arrived yet."""
        description = self._descriptions.get((site, device))
        return description.units() if description is not None else None

    def start(self) -> None:
        """Connect (retrying in the background) and keep the descriptions up to date."""
        bridge = LoopBridge()
        client = make_client(self._config, client_id=self._client_id, clean_session=True)
        client.on_connect = lambda c, u, f, rc, p: bridge.call(self._on_connect, c, rc)
        client.on_connect_fail = lambda c, u: bridge.call(self._report.failed)
        client.on_disconnect = lambda c, u, f, rc, p: bridge.call(self._report.failed)
        client.on_message = lambda c, u, msg: bridge.call(self._on_message, msg)
        client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        """Disconnect; blocking (paho joins its thread): call it off the event loop."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: mqtt.Client, reason_code: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._report.failed(f"refused: {reason_text(reason_code)}")
            return
        self._report.connected()
        client.subscribe([(f, 1) for f in self._filters])

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        parts = message.topic[len(self._prefix) + 1 :].split("/")
        if len(parts) != 3 or parts[1] != "devices":
            return
        site, device = parts[0], parts[2]
        payload = bytes(message.payload)
        if not payload:  # the device was removed from the gateway's configuration
            if self._descriptions.pop((site, device), None) is not None:
                self._on_change(site, device)
            return
        try:
            description = decode_device(payload, topic_site=site, topic_device=device)
        except TelemetryError as exc:
            if message.topic not in self._invalid_logged:
                self._invalid_logged.add(message.topic)
                log.warning("ignoring the device description on %s: %s", message.topic, exc)
            return
        self._invalid_logged.discard(message.topic)
        self._descriptions[(site, device)] = description
        self._on_change(site, device)
