"""Canary Gateway: building sensors to MQTT and an InfluxDB-API store, without losing a reading."""

__version__ = "0.1.0"
