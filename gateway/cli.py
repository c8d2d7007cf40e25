"""The ``gateway`` command.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage. Expected failures print one
line per problem on stderr and never a traceback; a traceback means a bug and is worth a report.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import GatewayConfig, InfluxConfig, load_config
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pymodbus", "amqtt", "transitions", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"config error: {exc}".replace("\n", "\nconfig error: "), file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"canary-gateway {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate a configuration file and exit")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=_check)

    run = commands.add_parser("run", help="poll devices, buffer and publish readings")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument(
        "--simulate",
        action="store_true",
        help="serve every configured device from an in-process simulator",
    )
    run.set_defaults(handler=_run)

    bridge = commands.add_parser("bridge", help="write MQTT telemetry into the InfluxDB-API store")
    bridge.add_argument("--config", type=Path, required=True)
    bridge.set_defaults(handler=_bridge)

    demo = commands.add_parser("demo", help="run the simulated demo site with an embedded broker")
    demo.add_argument("--config", type=Path, default=Path("config/demo.toml"))
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    buses = {d.bus_key() for d in config.enabled_devices()}
    print(
        f"{args.config}: ok (site {config.site.id}, {len(config.enabled_devices())} devices "
        f"on {len(buses)} buses)"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from gateway.app import run_gateway  # noqa: PLC0415 - keeps `gateway check` light

    config = load_config(args.config)
    return _serve(lambda stop: run_gateway(config, stop=stop, simulate=args.simulate))


def _bridge(args: argparse.Namespace) -> int:
    from gateway.bridge.influx import InfluxWriter  # noqa: PLC0415
    from gateway.bridge.service import Bridge  # noqa: PLC0415

    config = load_config(args.config)
    influx = _require_influx(config, args.config)
    token = influx.token.resolve() if influx.token is not None else None
    writer = InfluxWriter(url=influx.url, org=influx.org, bucket=influx.bucket, token=token)

    async def bridge_until(stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(Bridge(config=config, writer=writer).run(), name="bridge")
            await stop.wait()
            task.cancel()

    return _serve(bridge_until)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415

    config = load_config(args.config)
    return _serve(lambda stop: run_demo(config, stop=stop, duration=args.duration))


def _require_influx(config: GatewayConfig, path: Path) -> InfluxConfig:
    if config.influxdb is None:
        raise ConfigError(
            f"{path}: influxdb: required by 'gateway bridge' but the section is missing"
        )
    return config.influxdb


def _serve(body: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``body(stop_event)`` in a fresh loop; SIGINT/SIGTERM set the event for a clean stop."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await body(stop)

    asyncio.run(runner())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
