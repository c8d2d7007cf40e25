"""Child process for the crash test: appends and acknowledges readings in a tight loop.

After each commit it prints what is now durable: ``appended <seq>`` (every reading up to seq is
stored) or ``deleted <seqs...>`` (those readings were acknowledged and are gone). The parent kills
it with SIGKILL at a random moment and checks the file.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.buffer import SqliteBuffer
from gateway.model import Reading, utc_ms


def main() -> None:
    buffer = SqliteBuffer(Path(sys.argv[1]))
    seq = buffer.last_seq()
    print(f"start {seq}", flush=True)
    loop = 0
    while True:
        ts = utc_ms(datetime.now(UTC))
        batch = [
            Reading(device="meter", metric="power", value=float(s), unit="W", ts=ts, seq=s)
            for s in range(seq + 1, seq + 51)
        ]
        buffer.append(batch)
        seq += 50
        print(f"appended {seq}", flush=True)
        loop += 1
        if loop % 3 == 0:
            begun = buffer.begin(60)
            if begun is not None:
                print(f"deleting {' '.join(str(r.seq) for r in begun.readings)}", flush=True)
                buffer.end(begun, accepted=True)
                print("deleted", flush=True)


if __name__ == "__main__":
    main()
