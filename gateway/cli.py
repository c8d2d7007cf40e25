"""The ``gateway`` command.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (`gateway status`: 1 when the
daemon is not healthy, 3 when it is not running). Expected failures print one
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

from gateway import __version__, logs
from gateway.config import GatewayConfig, InfluxConfig, load_config
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_NOT_RUNNING = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        code: int = args.handler(args)
    except (GatewayError, BaseExceptionGroup) as exc:
        # A task group (`gateway bridge`, `gateway demo`) wraps a task's expected failure in an
        # exception group: it is still an expected failure, reported in one line, not a bug.
        errors = _expected(exc)
        if errors is None:
            raise
        return _report(errors)
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def _expected(exc: BaseException) -> list[GatewayError] | None:
    """The `GatewayError`s ``exc`` consists of (nested groups flattened), or None if any part
    of it is something else (a bug, whose traceback must show)."""
    if isinstance(exc, GatewayError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return None
    found: list[GatewayError] = []
    for part in exc.exceptions:
        errors = _expected(part)
        if errors is None:
            return None
        found += errors
    return found


def _report(errors: Sequence[GatewayError]) -> int:
    """Print each error on stderr, a line per problem; exit 2 if any is a `ConfigError`."""
    for error in errors:
        prefix = "config error: " if isinstance(error, ConfigError) else "error: "
        print(prefix + str(error).replace("\n", "\n" + prefix), file=sys.stderr)
    return EXIT_CONFIG if any(isinstance(e, ConfigError) for e in errors) else EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"canary-gateway {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate a configuration and what the daemon needs to start with it (secrets, "
        "TLS files, buffer, panels, device nodes); exit 2 with one line per problem",
    )
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--simulate",
        action="store_true",
        help="devices from their simulators, as `gateway run --simulate`: no device nodes, no "
        "unit sandbox, this user",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the broker and poll every enabled device once (exit 1 on failure)",
    )
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
    demo.add_argument(
        "--config",
        type=Path,
        default=None,
        help="default: the simulated reference site shipped with the package (gateway/demo.toml)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    demo.set_defaults(handler=_demo)
    _add_calibrate(commands)
    _add_commissioning(commands)
    _add_status(commands)
    return parser


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="what the running daemon is doing (devices, buffer, broker, clock, alarms)"
    )
    status.add_argument(
        "--config",
        type=Path,
        default=None,
        help="read [local] socket from it (default: the default socket)",
    )
    status.add_argument("--json", action="store_true", help="print the daemon's snapshot as JSON")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from gateway.config import DEFAULT_SOCKET  # noqa: PLC0415
    from gateway.local import client  # noqa: PLC0415

    path = Path(DEFAULT_SOCKET)
    if args.config is not None:
        socket_path = load_config(args.config).local.socket_path
        if socket_path is None:
            raise ConfigError(f'{args.config}: local.socket: the status socket is off ("")')
        path = socket_path
    try:
        _code, body = client.fetch(path)
    except client.NotRunning as exc:
        print(f"gateway status: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    snapshot = client.parse(body)
    print(body.decode().rstrip("\n") if args.json else client.render(snapshot))
    return EXIT_OK if snapshot.health.ok else EXIT_FAILURE


def _add_calibrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="SCD4x forced recalibration and settings (stop the daemon first)"
    )
    actions = calibrate.add_subparsers(dest="action", required=True, metavar="ACTION")
    co2 = actions.add_parser(
        "co2", help="forced recalibration to a known CO2 concentration (takes > 3 minutes)"
    )
    co2.add_argument("--ppm", type=int, required=True, help="reference CO2, e.g. 420 outdoors")
    co2.add_argument("--config", type=Path, required=True)
    co2.add_argument("--measure-s", type=float, default=180.0, help="at least 180 (datasheet)")
    co2.add_argument("--stable-ppm", type=float, default=50.0, help="allowed spread, last minute")
    co2.add_argument("device", help="the id of an scd4x device in the configuration")
    co2.set_defaults(handler=_calibrate_co2)
    show = actions.add_parser("show", help="print the sensor's compensation settings")
    show.add_argument("--config", type=Path, required=True)
    show.add_argument("device", help="the id of an scd4x device in the configuration")
    show.set_defaults(handler=_calibrate_show)


def _calibrate_co2(args: argparse.Namespace) -> int:
    from gateway import calibrate  # noqa: PLC0415 - imports the Adafruit driver

    if not 300 <= args.ppm <= 2000 or args.measure_s < 180:
        print("error: --ppm must be 300-2000 and --measure-s at least 180", file=sys.stderr)
        return EXIT_CONFIG
    device = calibrate.find_scd4x(load_config(args.config), args.device, source=str(args.config))
    print(calibrate.DAEMON_NOTICE, file=sys.stderr)
    correction = calibrate.recalibrate_co2(
        device, args.ppm, measure_s=args.measure_s, stable_ppm=args.stable_ppm
    )
    print(f"{device.id}: forced recalibration to {args.ppm} ppm done ({correction:+d} ppm)")
    return EXIT_OK


def _calibrate_show(args: argparse.Namespace) -> int:
    from gateway import calibrate  # noqa: PLC0415

    device = calibrate.find_scd4x(load_config(args.config), args.device, source=str(args.config))
    print(calibrate.DAEMON_NOTICE, file=sys.stderr)
    for key, value in calibrate.read_settings(device).items():
        print(f"{device.id}: {key} = {value}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from gateway import preflight  # noqa: PLC0415
    from gateway.local import metrics  # noqa: PLC0415

    config = load_config(args.config)
    host = preflight.daemon_host(sandboxed=not args.simulate)
    problems = [
        problem.line(str(args.config))
        for problem in preflight.preflight(config, host=host, simulate=args.simulate)
    ]
    if config.local.http and not metrics.available():
        problems.append(f"{args.config}: local.http: {metrics.MISSING}")
    if problems:
        raise ConfigError("\n".join(problems))
    buses = {d.bus_key() for d in config.enabled_devices()}
    where = "simulated devices" if args.simulate else "under its unit"
    print(
        f"{args.config}: ok (site {config.site.id}, {len(config.enabled_devices())} devices "
        f"on {len(buses)} buses; checked for user {host.identity.name}, {where})"
    )
    if not args.connect:
        return EXIT_OK
    from gateway.preflight.connect import check_online  # noqa: PLC0415 - drivers, paho

    return asyncio.run(check_online(config, simulate=args.simulate))


def _run(args: argparse.Namespace) -> int:
    from gateway.app import run_gateway  # noqa: PLC0415 - keeps `gateway check` light
    from gateway.notify import Notifier  # noqa: PLC0415
    from gateway.reload import Reloads  # noqa: PLC0415

    config = load_config(args.config)
    notifier = Notifier.from_environment()

    async def run_until(stop: asyncio.Event) -> None:
        # SIGHUP (`systemctl reload gateway`): validate the file again and apply it.
        reloads = Reloads(load=lambda: load_config(args.config))
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloads.request)
        try:
            await run_gateway(
                config, stop=stop, simulate=args.simulate, notifier=notifier, reloads=reloads
            )
        finally:
            notifier.close()

    return _serve(run_until)


def _bridge(args: argparse.Namespace) -> int:
    from gateway.bridge.influx import InfluxWriter  # noqa: PLC0415
    from gateway.bridge.service import Bridge  # noqa: PLC0415

    config = load_config(args.config)
    influx = _require_influx(config, args.config)
    writer = InfluxWriter.from_config(influx)

    async def bridge_until(stop: asyncio.Event) -> None:
        from gateway.notify import Notifier, keep_alive  # noqa: PLC0415

        notifier = Notifier.from_environment()
        async with asyncio.TaskGroup() as group:
            task = group.create_task(Bridge(config=config, writer=writer).run(), name="bridge")
            pings = group.create_task(keep_alive(notifier, task, "bridging"), name="watchdog")
            notifier.ready("bridging")
            await stop.wait()
            notifier.stopping()
            task.cancel()
            pings.cancel()
        notifier.close()

    return _serve(bridge_until)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import DEMO_CONFIG, run_demo  # noqa: PLC0415

    config = load_config(args.config or DEMO_CONFIG)
    return _serve(lambda stop: run_demo(config, stop=stop, duration=args.duration))


def _add_commissioning(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = commands.add_parser(
        "scan", help="find Modbus devices on a TCP host or a serial line; print a config snippet"
    )
    where = scan.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP device or TCP-to-RS-485 gateway")
    where.add_argument("--serial", help="RS-485 port, e.g. /dev/ttyUSB0 (Modbus RTU)")
    scan.add_argument("--port", type=int, default=502, help="TCP only (default 502)")
    scan.add_argument("--units", default="1-10", help="unit ids, e.g. 1-10,20 (default 1-10)")
    scan.add_argument(
        "--bauds",
        default=None,
        help="serial only: baud rates to try, in order (default 9600,19200,2400,4800,38400,"
        "57600,115200,1200)",
    )
    scan.add_argument("--parity", choices=["N", "E", "O"], default="N", help="serial only")
    scan.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds a unit may take to answer (default 0.5 TCP, 0.15 serial)",
    )
    scan.set_defaults(handler=_scan)
    read = commands.add_parser(
        "read",
        help="one measurement of a configured device (waiting for a sensor's next one and "
        "through a PMSA003I's warm-up), printed as a table with units",
    )
    read.add_argument("--config", type=Path, required=True)
    read.add_argument("--simulate", action="store_true", help="read the device's simulator instead")
    read.add_argument(
        "--json", action="store_true", help="print one JSON object (values, units, quality)"
    )
    read.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for a measurement at most (default 60)",
    )
    read.add_argument("device", help="the id of a device in the configuration")
    read.set_defaults(handler=_read)


def _scan(args: argparse.Namespace) -> int:
    from gateway import commission  # noqa: PLC0415

    try:
        units = commission.parse_units(args.units)
    except ValueError as exc:
        print(f"error: --units: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.timeout is not None and not 0 < args.timeout <= 60:
        print("error: --timeout: expected seconds, more than 0 and at most 60", file=sys.stderr)
        return EXIT_CONFIG
    if args.serial is not None:
        try:
            bauds = commission.parse_bauds(args.bauds or commission.DEFAULT_BAUDS_TEXT)
        except ValueError as exc:
            print(f"error: --bauds: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if not args.serial.startswith("/"):
            print("error: --serial: expected an absolute path, e.g. /dev/ttyUSB0", file=sys.stderr)
            return EXIT_CONFIG
        timeout = args.timeout or commission.SERIAL_PROBE_TIMEOUT
        return asyncio.run(
            commission.scan_serial(
                args.serial, bauds, units, parity=args.parity, probe_timeout=timeout
            )
        )
    return asyncio.run(
        commission.scan_tcp(args.host, args.port, units, request_timeout=args.timeout or 0.5)
    )


def _read(args: argparse.Namespace) -> int:
    from gateway import commission  # noqa: PLC0415

    if not 0 < args.wait <= 3600:
        print("error: --wait: expected seconds, more than 0 and at most 3600", file=sys.stderr)
        return EXIT_CONFIG
    config = load_config(args.config)
    device = commission.find_device(config, args.device, source=str(args.config))
    if not args.simulate:
        return asyncio.run(commission.read_device(device, as_json=args.json, bound=args.wait))

    async def simulated_read() -> int:
        from gateway.simulate import simulated  # noqa: PLC0415

        async with simulated(config) as (redirected, buses, _site):
            target = commission.find_device(redirected, args.device, source=str(args.config))
            return await commission.read_device(
                target, buses=buses, as_json=args.json, bound=args.wait
            )

    return asyncio.run(simulated_read())


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
