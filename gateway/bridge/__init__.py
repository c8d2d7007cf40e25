"""MQTT -> InfluxDB-API bridge: acknowledges a message only after the store accepted its points."""
