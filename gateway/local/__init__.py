"""The local status: what a technician on site sees without the uplink (docs/operations.md).

`latest` keeps the last value of every metric, `snapshot` describes the running daemon, `server`
serves it on a unix socket (and optionally TCP) for `gateway status`, ``/healthz`` and
``/metrics`` (`metrics`), `client` is the `gateway status` side.
"""
