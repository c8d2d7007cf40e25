"""SunSpec models whose announced length differs from the definition (issue 15, acceptance 6).

The register images here are built from pysunspec2's own model definitions (``sunspec2.device.
Model``, which lays out model 1 without its ``Pad`` when told ``L = 65``), not from the project's
simulator, and are served by `tests.drivers.register_image_server` — a strict Modbus TCP server
written for the tests that answers exception 02 to any read touching an undefined register.
pysunspec2 scans the same server, and every point the gateway decodes must equal pysunspec2's
``cvalue``. Covered: the common model with ``L = 65``; extra trailing registers after models
without repeating block (120, 203); a model 160 too long for one read; and the lengths
pysunspec2 itself cannot read (model 1 shorter than 65, model 160 with a partial block), which
cost only that model.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sunspec2 import device as sunspec_device
from sunspec2 import mb as sunspec_mb
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from drivers.modbus.sunspec.decode import DecodedModel
from drivers.modbus.sunspec.driver import SunSpecTcpDriver
from drivers.modbus.sunspec.metrics import metric_sources
from drivers.modbus.sunspec.models import model_definitions
from gateway import commission
from gateway.cli import main
from gateway.errors import DecodeError
from tests.drivers.register_image_server import RegisterImageServer, Request

BASE = 40000
END = [0xFFFF, 0]
UNIT = 1


def _raw_value(point: Any, rng: random.Random, repeats: int) -> Any:
    """A random implemented raw value for a pysunspec2 point (None: leave not implemented)."""
    kind = point.pdef["type"]
    name = point.pdef["name"]
    if kind == "count":
        return repeats
    if kind == "sunssf":
        return rng.randint(-3, 2)
    if rng.random() < 0.1:
        return None  # some points are not implemented: both must say "no value"
    if kind == "string":
        return f"{name}-{rng.randint(0, 999)}"[: point.len * 2]
    ranges = {
        "int16": (-30000, 30000),
        "uint16": (0, 65000),
        "acc16": (1, 65000),
        "enum16": (0, 12),
        "bitfield16": (0, 0x7FFF),
        "int32": (-(2**30), 2**30),
        "uint32": (0, 2**32 - 2),
        "acc32": (1, 2**32 - 1),
        "bitfield32": (0, 2**31),
        "enum32": (0, 100),
    }
    if kind in ranges:
        return rng.randint(*ranges[kind])
    if kind == "float32":
        return rng.randint(-(10**6), 10**6) / 4  # exact in float32
    raise AssertionError(f"no value generator for {kind}")


def _size(point: dict[str, Any]) -> int:
    return int(point.get("size") or sunspec_mb.point_type_info[point["type"]].len)


def model_image(
    model_id: int, *, seed: int, repeats: int = 0, length: int | None = None, extra: int = 0
) -> list[int]:
    """One model's registers from pysunspec2's definition: ``length`` (default: the definition's,
    with ``repeats`` repeating blocks), then ``extra`` trailing registers announced in ``L``."""
    if length is None:
        bare = sunspec_device.Model(model_id=model_id, model_len=0)  # the fixed block alone
        groups = bare.model_def["group"].get("groups", [])
        block = sum(_size(p) for p in groups[0]["points"]) if groups else 0
        length = bare.len - 2 + repeats * block
    model = sunspec_device.Model(model_id=model_id, model_len=length)
    rng = random.Random(f"{model_id}:{seed}")
    groups = [model] + [g for gs in model.groups.values() for g in gs]
    for group in groups:
        for name, point in group.points.items():
            if name not in ("ID", "L") and point.pdef["type"] != "pad":  # pysunspec2 sets those
                point.set_value(_raw_value(point, rng, repeats))
    data = model.get_mb()
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    assert words[0] == model_id and words[1] == length, (words[:2], length)
    words[1] += extra
    return words + [0x1234 + i for i in range(extra)]


def device_image(models: Sequence[list[int]], base: int = BASE) -> dict[int, int]:
    """ "SunS", the models back to back, the end marker; address -> register."""
    words = [0x5375, 0x6E53]
    for model in models:
        words += model
    words += END
    return {base + i: w for i, w in enumerate(words)}


def pysunspec2_scan(port: int) -> list[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    """pysunspec2's reading: per model in map order, fixed points' cvalues and each block's."""
    client = SunSpecModbusClientDeviceTCP(slave_id=UNIT, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        client.scan()
        result = []
        for model in client.model_list:
            fixed = {name: point.cvalue for name, point in model.points.items()}
            blocks = [
                {name: p.cvalue for name, p in group.points.items()}
                for groups in model.groups.values()
                for group in (groups if isinstance(groups, list) else [groups])
            ]
            result.append((model.model_id, fixed, blocks))
        return result
    finally:
        client.close()


def assert_equal_to_pysunspec2(
    ours: Sequence[DecodedModel], theirs: Sequence[tuple[int, dict[str, Any], list[Any]]]
) -> int:
    """Every point we decode equals pysunspec2's; returns how many were compared."""
    assert [m.id for m in ours] == [t[0] for t in theirs]
    compared = 0
    for model, (model_id, their_fixed, their_blocks) in zip(ours, theirs, strict=True):
        pads = {p.name for p in model_definitions()[model_id].fixed.points if p.type == "pad"}
        assert set(model.values) == set(their_fixed) - pads, model_id
        for name, value in model.values.items():
            assert value == their_fixed[name], f"model {model_id} point {name}"
            assert value is None or type(value) is type(their_fixed[name])
            compared += 1
        assert [dict(b) for b in model.repeats] == their_blocks, model_id
        compared += sum(len(b) for b in their_blocks)
    return compared


async def _read_with_gateway(
    port: int, models: Sequence[int] | None = None
) -> tuple[SunSpecTcpDriver, list[DecodedModel], dict[str, Any]]:
    driver = SunSpecTcpDriver(host="127.0.0.1", port=port, unit_id=UNIT, models=models)
    try:
        await driver.open()
        ours = await driver.read_all()
        polled = dict(await driver.poll())
    finally:
        await driver.close()
    return driver, ours, polled


def test_common_model_of_length_65_and_extra_trailing_registers_read_as_pysunspec2() -> None:
    common = model_image(1, seed=1, length=65)
    assert len(common) == 67
    image = device_image(
        [
            common,
            model_image(103, seed=2),
            model_image(120, seed=3, extra=4),  # L = 30: four registers nobody defined
            model_image(160, seed=4, repeats=2),
            model_image(203, seed=5, extra=3),  # L = 108
        ]
    )

    async def scenario() -> None:
        async with RegisterImageServer(holding=image, units={UNIT}) as server:
            theirs = await asyncio.to_thread(pysunspec2_scan, server.port)
            server.requests.clear()
            driver, ours, polled = await _read_with_gateway(server.port)
            requests = list(server.requests)
        assert [(t[0], len(t[2])) for t in theirs] == [
            (1, 0),
            (103, 0),
            (120, 0),
            (160, 2),
            (203, 0),
        ]
        assert set(theirs[0][1]) == {"ID", "L", "Mn", "Md", "Opt", "Vr", "SN", "DA"}  # no Pad
        compared = assert_equal_to_pysunspec2(ours, theirs)
        definitions = model_definitions()

        def points(model_id: int, repeats: int = 0) -> int:
            model = definitions[model_id]
            blocks = (
                [model.fixed] + [model.repeating] * repeats if model.repeating else [model.fixed]
            )
            return sum(1 for b in blocks for p in b.points if p.type != "pad")

        # Every point but the pads, in both readings: model 1 at L = 65 has all 8 of its points.
        assert compared == 8 + points(103) + points(120) + points(160, 2) + points(203) == 183
        assert dict(driver.identity) == {k: theirs[0][1][k] for k in driver.identity}
        assert driver.identity["Mn"] is not None
        # The published metrics carry pysunspec2's numbers under the documented keys.
        by_id = {t[0]: t for t in theirs}
        checked = 0
        for model in ours[1:]:
            sources = metric_sources(model_definitions()[model.id], len(model.repeats))
            for source in sources:
                _, fixed, blocks = by_id[source.model_id]
                want = fixed if source.repeat is None else blocks[source.repeat]
                assert polled[source.spec.key] == want[source.point], source.spec.key
                checked += 1
        assert checked == len(polled) == len(driver.metrics)
        # No read touched the undefined extra registers' neighbours beyond the map, and every
        # read stayed within the 125-register limit.
        assert all(r.count <= 125 for r in requests)

    asyncio.run(scenario())


def test_model_160_longer_than_one_read_agrees_with_pysunspec2() -> None:
    """Eight MPPT inputs: 170 registers, read as fixed block + 5 inputs, 3 inputs, and a re-read
    of the 4 scale factors; pysunspec2 reads the same device in its own access regions."""
    image = device_image(
        [model_image(1, seed=6), model_image(101, seed=7), model_image(160, seed=8, repeats=8)]
    )

    async def scenario() -> None:
        async with RegisterImageServer(holding=image, units={UNIT}) as server:
            theirs = await asyncio.to_thread(pysunspec2_scan, server.port)
            server.requests.clear()
            driver, ours, polled = await _read_with_gateway(server.port, models=[160])
            requests = [(r.address, r.count) for r in server.requests]
        assert_equal_to_pysunspec2(ours, theirs)
        mppt = BASE + 2 + 68 + 52
        # The poll's reads: fixed block + 5 inputs, the last 3 inputs, the 4 scale factors again.
        assert requests[-3:] == [(mppt, 110), (mppt + 110, 60), (mppt + 2, 4)]
        assert polled["dc_power_8"] == theirs[2][2][7]["DCW"]
        assert sorted(k for k in driver.metrics if k.startswith("dc_power_")) == sorted(
            f"dc_power_{i}" for i in range(1, 9)
        )

    asyncio.run(scenario())


def test_scale_factor_moving_between_the_reads_of_a_long_model_withholds_the_poll() -> None:
    mppt_words = model_image(160, seed=9, repeats=8)
    image = device_image([model_image(1, seed=10), mppt_words])
    mppt = BASE + 2 + 68

    async def scenario() -> None:
        async with RegisterImageServer(holding=image, units={UNIT}) as server:
            driver = SunSpecTcpDriver(host="127.0.0.1", port=server.port, unit_id=UNIT)

            def move_dcw_sf(request: Request) -> None:
                if request.address == mppt + 110:  # after the inputs 6-8: DCW_SF goes up
                    server.set_holding(mppt + 4, [(image[mppt + 4] + 1) & 0xFFFF])

            try:
                await driver.open()
                server.after_answer = move_dcw_sf
                with pytest.raises(
                    DecodeError, match=r"scale factors at \[40074\] changed"
                ) as info:
                    await driver.poll()
                assert info.value.kind == "decode"
                server.after_answer = None
                values = await driver.poll()  # the next poll reads it afresh
                assert values["dc_power_8"] is not None
            finally:
                await driver.close()

    asyncio.run(scenario())


def test_a_bad_model_costs_only_itself(caplog: pytest.LogCaptureFixture) -> None:
    """Model 1 shorter than 65 (identity unknown) and a model 160 with a partial block (which
    pysunspec2 refuses outright): model 103 is still read, each problem logged once."""
    common = model_image(1, seed=11, length=65)[:52]
    common[1] = 50
    inverter = model_image(103, seed=12)
    mppt = model_image(160, seed=13, repeats=2)
    mppt[1] += 1  # L = 49: two blocks and one register of a third
    mppt.append(0)
    image = device_image([common, inverter, mppt])
    at_160 = BASE + 2 + len(common) + len(inverter)
    reference = device_image([model_image(1, seed=11), inverter])

    async def scenario() -> None:
        async with RegisterImageServer(holding=reference, units={UNIT}) as server:
            theirs = await asyncio.to_thread(pysunspec2_scan, server.port)
        async with RegisterImageServer(holding=image, units={UNIT}) as server:
            caplog.set_level(logging.WARNING, logger="drivers.modbus.sunspec.driver")
            driver = SunSpecTcpDriver(host="127.0.0.1", port=server.port, unit_id=UNIT)
            try:
                await driver.open()
                polls = [await driver.poll() for _ in range(3)]
            finally:
                await driver.close()
            only_160 = SunSpecTcpDriver(
                host="127.0.0.1", port=server.port, unit_id=UNIT, models=[160]
            )
            try:
                with pytest.raises(
                    DecodeError, match=f"no readable SunSpec model; at {at_160}: model 160"
                ):
                    await only_160.open()
            finally:
                await only_160.close()
        assert driver.identity == {}
        assert {k for k in driver.metrics if k.startswith(("dc_power_", "mppt_"))} == set()
        their_103 = theirs[1][1]
        assert all(p["ac_power"] == their_103["W"] for p in polls)
        assert all(p["ac_energy"] == their_103["WH"] for p in polls)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("model 1 at 40002 is not read" in w for w in warnings) == 2  # two opens
        assert sum("identity unknown" in w for w in warnings) == 2
        assert sum(f"model 160 at {at_160} is not read" in w for w in warnings) == 2
        assert len(warnings) == 4

    asyncio.run(scenario())


def test_gateway_read_and_scan_handle_a_common_model_of_length_65(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gateway read`` (the CLI, as an installer runs it) and ``gateway scan`` go through the
    same discovery and decoding."""
    common = model_image(1, seed=14, length=65)
    image = device_image([common, model_image(103, seed=15)])
    their_common: dict[str, Any] = {}

    async def scenario() -> None:
        async with RegisterImageServer(holding=image, units={UNIT}) as server:
            their_common.update((await asyncio.to_thread(pysunspec2_scan, server.port))[0][1])
            config = tmp_path / "gateway.toml"
            config.write_text(
                '[site]\nid = "kg-test"\n[[devices]]\nid = "roof-inverter"\n'
                f'driver = "sunspec"\ntransport = {{ kind = "tcp", host = "127.0.0.1", '
                f"port = {server.port} }}\n"
            )
            code = await asyncio.to_thread(main, ["read", "--config", str(config), "roof-inverter"])
            assert code == 0
            assert await commission.scan_tcp("127.0.0.1", server.port, [UNIT]) == 0

    asyncio.run(scenario())
    out = capsys.readouterr().out
    assert "roof-inverter (sunspec)" in out
    assert "ac_power" in out
    identity = " ".join(str(their_common[k]) for k in ("Mn", "Md", "SN"))
    assert f"# SunSpec models 1, 103 ({identity})" in out
