"""A thin, blocking client of the time-series store: writes through the InfluxDB v2 write API
(InfluxDB 2.x, VictoriaMetrics, ...), reads points back through VictoriaMetrics' export API, and
says which kind of "no" the store answered.

Blocking on purpose: the bridge calls it from worker threads and must know, before acknowledging
anything, what the store did with a write. Retries belong to the caller, which keeps the messages
unacknowledged meanwhile.

Why the classification matters (`StoreError.fault`): only a message whose *content* the store
rejects may be dead-lettered and acknowledged. A rotated token (401/403), a renamed bucket or org
(404), a wrong URL path (VictoriaMetrics answers 400 "unsupported path") say nothing about the
content: dead-lettering on them would throw the whole stream away. They are ``refused``: the
caller holds the messages and retries until the configuration is fixed.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import urllib3
from influxdb_client import InfluxDBClient, Point
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from gateway.bridge.points import PointKey
from gateway.config import InfluxConfig
from gateway.errors import SinkError

log = logging.getLogger(__name__)

#: What the caller must do with a write the store did not accept:
#: ``unreachable``/``busy`` (no connection, timeout, 408, 429, 5xx): retry with backoff;
#: ``refused`` (401, 403, 404, any other 4xx that is not about the content): a configuration
#: fault, hold the messages, raise the alarm, retry with backoff, never dead-letter;
#: ``content`` (422, 400 with a parse error): isolate the message and dead-letter it;
#: ``too_large`` (413): split the request.
Fault = Literal["unreachable", "busy", "refused", "content", "too_large"]

#: InfluxDB answers a line-protocol error with 400 and "unable to parse ..." (2.x: in the JSON
#: ``message``, 1.x: in ``error``). A 400 without it (VictoriaMetrics' "unsupported path") is
#: not about the content.
_PARSE_ERROR = re.compile(r"\bpars(e|ing)\b", re.IGNORECASE)

#: A token, or where to read it from now (re-read on every auth failure, so that a rotated
#: credentials file takes effect without a restart).
Secret = str | Callable[[], str | None] | None


class StoreError(SinkError):
    """The store did not accept a request; ``fault`` says what to do, ``status`` is the HTTP
    status (0 when there was no answer)."""

    def __init__(self, message: str, *, fault: Fault, status: int = 0) -> None:
        super().__init__(message, retryable=fault in ("unreachable", "busy", "refused"))
        self.fault: Fault = fault
        self.status = status


def classify(status: int, message: str) -> Fault:
    """The fault class of an HTTP answer ``status`` whose error text is ``message``."""
    if status in (408, 429) or status >= 500:
        return "busy"
    if status == 413:
        return "too_large"
    if status == 422 or (status == 400 and _PARSE_ERROR.search(message)):
        return "content"
    return "refused"


class InfluxWriter:
    """Writes points synchronously; raises `StoreError` when the store did not accept them.

    ``basic_auth``: send the secret (``user:password``) as HTTP Basic instead of
    ``Authorization: Token``.
    """

    def __init__(
        self,
        *,
        url: str,
        org: str,
        bucket: str,
        token: Secret,
        basic_auth: bool = False,
        timeout_ms: int = 10_000,
    ) -> None:
        self._url = url.rstrip("/")
        self._bucket = bucket
        self._org = org
        self._basic = basic_auth
        self._timeout_ms = timeout_ms
        self._source = token
        self._token = self._resolve()
        self._client, self._write = self._connect()
        self._flush_refused = False
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=timeout_ms / 1000), retries=False
        )

    @classmethod
    def from_config(cls, config: InfluxConfig) -> InfluxWriter:
        """The writer ``[influxdb]`` describes; its credential is read now and again after
        every refusal (a rotated token file takes effect without a restart)."""
        return cls(
            url=config.url,
            org=config.org,
            bucket=config.bucket,
            token=config.token.resolve if config.token is not None else None,
            basic_auth=config.auth == "basic",
        )

    def _resolve(self) -> str | None:
        return self._source() if callable(self._source) else self._source

    def _connect(self) -> tuple[InfluxDBClient, WriteApi]:
        client = InfluxDBClient(
            url=self._url,
            token=self._token or "",
            org=self._org,
            timeout=self._timeout_ms,
            auth_basic=self._basic and bool(self._token),
        )
        return client, client.write_api(write_options=SYNCHRONOUS)

    def refresh_credentials(self) -> bool:
        """Read the secret again; True if it changed (the next request uses the new one).

        Raises `gateway.errors.ConfigError` when the secret cannot be read.
        """
        token = self._resolve()
        if token == self._token:
            return False
        self._token = token
        old = self._client
        self._client, self._write = self._connect()
        old.close()
        return True

    def write(self, points: Sequence[Point]) -> None:
        """Write ``points`` in one request; return only once the store accepted them."""
        try:
            self._write.write(bucket=self._bucket, org=self._org, record=list(points))
        except ApiException as exc:
            status = int(exc.status or 0)
            text = _error_text(exc)
            raise StoreError(
                f"time-series store answered HTTP {status} {exc.reason}: {text}",
                fault=classify(status, text),
                status=status,
            ) from exc
        except (HTTPError, OSError) as exc:
            raise StoreError(f"time-series store unreachable: {exc}", fault="unreachable") from exc

    def present(self, keys: Iterable[PointKey]) -> set[PointKey]:
        """Which of ``keys`` the store holds now, with the right ``seq``.

        Reads ``<measurement>_<field>`` (``seq``, or ``first`` of a gap) back through VictoriaMetrics' ``/api/v1/export`` (one request for
        all keys: their sites, devices and metrics, over their time range). Every reading has a
        ``seq`` field and its ``value`` travels in the same line, so the line is there when its
        ``seq`` is. Only when something seems missing does it ask the store to make everything
        searchable (`_force_flush`) and look again. A store without the export API (InfluxDB)
        answers 404: `StoreError` ``refused``, with a message that says to turn ``read_back`` off.
        """
        wanted = set(keys)
        if not wanted:
            return set()
        try:
            found = self._export(wanted)
            if not wanted <= found:
                self._force_flush()
                found = self._export(wanted)
        except (HTTPError, OSError) as exc:
            raise StoreError(f"time-series store unreachable: {exc}", fault="unreachable") from exc
        return wanted & found

    def _export(self, wanted: set[PointKey]) -> set[PointKey]:
        fields = {f"{k.metric}_{k.field}": (k.metric, k.field) for k in wanted}
        names = sorted(fields)
        sites = sorted({k.site for k in wanted})
        devices = sorted({k.device for k in wanted})
        selector = (
            f'{{__name__=~"{_alternatives(names)}",site=~"{_alternatives(sites)}",'
            f'device=~"{_alternatives(devices)}"}}'
        )
        query = {
            "match[]": selector,
            "start": str(math.floor(min(k.ts_ms for k in wanted) / 1000)),
            "end": str(math.ceil(max(k.ts_ms for k in wanted) / 1000) + 1),
        }
        url = f"{self._url}/api/v1/export"
        answer = self._http.request("GET", url, fields=query, headers=self._auth_header())
        if answer.status != 200:
            text = answer.data.decode("utf-8", errors="replace").strip()[:300]
            fault = classify(answer.status, "")
            if answer.status == 404:
                text = (
                    "the store has no /api/v1/export: read_back needs VictoriaMetrics; set "
                    "[bridge] read_back = false and ack_delay to the store's durability delay"
                )
            raise StoreError(
                f"read-back: time-series store answered HTTP {answer.status}: {text}",
                fault="refused" if fault == "content" else fault,
                status=answer.status,
            )
        found: set[PointKey] = set()
        for line in answer.data.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            metric = row["metric"]
            name = str(metric.get("__name__", ""))
            if name not in fields:
                continue
            measurement, field = fields[name]
            for value, ts in zip(row["values"], row["timestamps"], strict=True):
                found.add(
                    PointKey(
                        site=str(metric.get("site", "")),
                        device=str(metric.get("device", "")),
                        metric=measurement,
                        ts_ms=int(ts),
                        seq=int(value),
                        field=field,
                    )
                )
        return found

    def _force_flush(self) -> None:
        """Make every accepted point searchable now (VictoriaMetrics ``/internal/force_flush``).

        Without it a point of a new series may stay invisible for ~9 s (1.79.5, measured), and
        the read-back would take it for lost. It does not make anything durable (measured: a
        SIGKILL right after it still loses the points). Best effort: a store that refuses it
        (``-forceFlushAuthKey``) only makes the read-back slower to see new series.
        """
        answer = self._http.request(
            "GET", f"{self._url}/internal/force_flush", headers=self._auth_header()
        )
        if answer.status != 200 and not self._flush_refused:
            self._flush_refused = True
            log.info(
                "the store refuses /internal/force_flush (HTTP %d): the read-back may take new "
                "series for lost and write them again",
                answer.status,
            )

    def _auth_header(self) -> dict[str, str]:
        if not self._token:
            return {}
        if self._basic:
            return {"Authorization": "Basic " + base64.b64encode(self._token.encode()).decode()}
        return {"Authorization": f"Token {self._token}"}

    def close(self) -> None:
        """Release the HTTP connection pools."""
        self._write.close()
        self._client.close()
        self._http.clear()


def _error_text(exc: ApiException) -> str:
    """The store's error message: InfluxDB 2.x JSON ``message``, 1.x ``error``, or the body."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = str(body or exc.reason or "").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or text)[:300]
    return text[:300]


def _alternatives(values: Sequence[str]) -> str:
    """A regex matching exactly ``values``, escaped for a PromQL string literal."""
    pattern = "|".join(re.escape(v) for v in values)
    return pattern.replace("\\", "\\\\").replace('"', '\\"')
