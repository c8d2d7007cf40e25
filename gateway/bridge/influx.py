"""A thin, blocking writer for the InfluxDB v2 write API (InfluxDB 2.x, VictoriaMetrics, ...).

Blocking on purpose: the bridge calls it from a worker thread and must know, before acknowledging
anything, whether the store accepted the write. Retries belong to the caller, which keeps the
messages unacknowledged meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from gateway.errors import SinkError


class InfluxWriter:
    """Writes points synchronously; raises `SinkError` (with ``retryable``) when not accepted."""

    def __init__(
        self, *, url: str, org: str, bucket: str, token: str | None, timeout_ms: int = 10_000
    ) -> None:
        self._bucket = bucket
        self._org = org
        self._client = InfluxDBClient(url=url, token=token or "", org=org, timeout=timeout_ms)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        """Write ``points`` in one request; return only once the store accepted them."""
        try:
            self._write.write(bucket=self._bucket, org=self._org, record=list(points))
        except ApiException as exc:
            status = int(exc.status or 0)
            retryable = status in (408, 429) or status >= 500
            raise SinkError(
                f"time-series store answered HTTP {status}: {exc.reason}", retryable=retryable
            ) from exc
        except (HTTPError, OSError) as exc:
            raise SinkError(f"time-series store unreachable: {exc}") from exc

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._write.close()
        self._client.close()
