"""Hardware drivers: bytes and registers in, typed values out.

Nothing here knows about MQTT, SQLite, configuration files or the wall clock; the only imports from
`gateway` are the shared kernel `gateway.model` and `gateway.errors`.
"""
