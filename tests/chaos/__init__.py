"""The chaos run of issue 16: the real chain (simulators, gateway, Mosquitto, bridge,
VictoriaMetrics) behind fault proxies, a seeded fault schedule, and a checker that proves from the
store that every polled reading is stored once or lies in a gap the gateway itself declared.

- `proxy`: an asyncio TCP proxy written for the test (drop, black-hole, latency, pass through);
- `schedule`: the seeded fault schedule;
- `chain`: starts the processes and the proxies, and applies the faults (recording when);
- `checker`: reads the store and the broker capture back and measures, independently of sequence
  numbers, what was polled.
"""
