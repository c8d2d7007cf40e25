"""Canary Gateway: building sensors to MQTT and an InfluxDB-API store, without losing a reading."""

#: The release version: the single source for pyproject.toml (dynamic), `gateway --version`, the
#: status topic and the Debian package (packaging/deb/build). Bump it with a CHANGELOG.md entry.
__version__ = "0.2.0"
