"""SunSpec: discovery of a device's model chain and decoding of its models.

See `discovery` (finding the map), `decode` (registers to scaled values), `metrics` (the gateway's
metric keys) and `driver` (the `SunSpecTcpDriver` the scheduler polls).
"""
