"""Payload v2 encodings compared (issue 10): bytes per value and encode time of one 10-value
meter poll (a u32 counter and 9 float32, keys ``c``, ``v1``..``v9``) as the gateway sends it.

- JSON with the standard library (what the gateway uses), float32 values as their shortest
  float32 text (`gateway.telemetry.shortest_float32`, copied here so that this runs without
  the gateway's dependencies);
- orjson (same JSON text: it writes floats with the shortest round-trip repr too);
- MessagePack (``msgpack``, float32 values packed as 4-byte floats);
- CBOR (``cbor2``, canonical: each float in the shortest width that keeps it exact).

The libraries are installed from PyPI into ``bench/.work/codec-venv`` on first use (a bench may
download; the gateway never needs them).

    python3 bench/codec.py
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / ".work" / "codec-venv"
PACKAGES = ["orjson", "msgpack", "cbor2"]
_F32 = struct.Struct("<f")


def shortest_float32(value: float) -> float:
    target = _F32.pack(value)
    lo, hi, best = 1, 9, float(f"{value:.9g}")
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = float(f"{value:.{mid}g}")
        if _F32.pack(candidate) == target:
            best, hi = candidate, mid
        else:
            lo = mid + 1
    return best


def poll(rng: random.Random, seq: int) -> tuple[dict[str, object], dict[str, float]]:
    raw = {f"v{i}": _F32.unpack(_F32.pack(230 + rng.uniform(-5, 5)))[0] for i in range(1, 10)}
    body: dict[str, object] = {"v": 2, "ts": 1_795_336_280_112 + seq, "seq": 1_000_000 + seq}
    body["values"] = {"c": 123_456_789, **raw}
    return body, raw


def timed(fn: object, bodies: list[dict[str, object]]) -> float:
    start = time.perf_counter()
    for body in bodies:
        fn(body)  # type: ignore[operator]
    return (time.perf_counter() - start) / len(bodies) * 1e6


def main() -> None:
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() != VENV.resolve():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        sys.exit(subprocess.run([str(python), __file__], check=False).returncode)
    import cbor2  # noqa: PLC0415 - only in the bench venv
    import msgpack  # noqa: PLC0415
    import orjson  # noqa: PLC0415

    rng = random.Random(1)
    polls = [poll(rng, n) for n in range(20_000)]
    short = []
    for body, raw in polls:
        values = {"c": body["values"]["c"]} | {k: shortest_float32(v) for k, v in raw.items()}  # type: ignore[index]
        short.append({**body, "values": values})
    exact = [body for body, _ in polls]

    def stdlib(b: dict[str, object]) -> bytes:
        return json.dumps(b, separators=(",", ":"), allow_nan=False).encode()

    def packer(b: dict[str, object]) -> bytes:
        return msgpack.packb(b, use_single_float=True)

    def cbor(b: dict[str, object]) -> bytes:
        return cbor2.dumps(b, canonical=True)

    def with_shortening(b: dict[str, object]) -> bytes:
        values = b["values"]
        shortened = {k: shortest_float32(v) if k != "c" else v for k, v in values.items()}  # type: ignore[attr-defined]
        return stdlib({**b, "values": shortened})

    rows = [
        ("JSON, stdlib, float32 shortest (the gateway)", stdlib, short, with_shortening),
        ("JSON, stdlib, float64 repr (no shortening)", stdlib, exact, None),
        ("JSON, orjson, float32 shortest", orjson.dumps, short, None),
        ("MessagePack (4-byte floats)", packer, exact, None),
        ("CBOR canonical (shortest exact float)", cbor, exact, None),
    ]
    print("| encoding | bytes per value | encode µs per message | with float32 shortening µs |")
    print("|---|---:|---:|---:|")
    for name, fn, bodies, full in rows:
        size = sum(len(fn(b)) for b in bodies[:1000]) / 1000 / 10
        per = timed(fn, bodies)
        total = f"{timed(full, exact):.1f}" if full else ""
        print(f"| {name} | {size:.1f} | {per:.1f} | {total} |")
    print(
        f"\nPython {sys.version.split()[0]}, orjson {orjson.__version__}, msgpack "
        f"{'.'.join(map(str, msgpack.version))}, cbor2 (canonical)"
    )


if __name__ == "__main__":
    main()
