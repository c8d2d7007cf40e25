"""The import layers of STYLE.md, checked on the source (AST, nothing is imported or executed).

    gateway/cli, app, demo, simulate -> gateway/* -> gateway/model, gateway/errors
                                     -> drivers/  -> gateway/model, gateway/errors
    simulators/ -> gateway/model only (they speak bytes; they never reuse a driver)

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``, relative
imports, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
Violations are reported as ``file:line: module``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Import:
    """One imported module: where (repo-relative file, line) and what (absolute dotted name)."""

    file: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.module}"


def module_name(path: Path) -> str:
    """``drivers/modbus/profiles.py`` -> ``drivers.modbus.profiles``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """True if ``dotted`` names a module or package of this repository."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve_from(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    """The absolute module a ``from X import ...`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    package = current.split(".") if is_package else current.split(".")[:-1]
    if node.level - 1 > len(package) - 1:
        raise ValueError(f"relative import beyond the top-level package in {current}")
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imports_of(source: str, *, file: str, current: str, is_package: bool = False) -> list[Import]:
    """Every module ``source`` imports, with ``from pkg import sub`` resolved to ``pkg.sub``."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=file)):
        if isinstance(node, ast.Import):
            found.extend(Import(file, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(node, current, is_package)
            for alias in node.names:
                # `from gateway import config` imports the module gateway.config; `from
                # gateway.model import Reading` imports gateway.model (Reading is not a module).
                sub = f"{base}.{alias.name}"
                found.append(Import(file, node.lineno, sub if is_module(sub) else base))
        elif (
            isinstance(node, ast.Call)
            and _is_dynamic_import(node.func)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(file, node.lineno, node.args[0].value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def scan(package: str) -> list[Import]:
    """Every import in every .py file under ``package/``."""
    found: list[Import] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        found.extend(
            imports_of(
                path.read_text(encoding="utf-8"),
                file=str(path.relative_to(ROOT)),
                current=module_name(path),
                is_package=path.name == "__init__.py",
            )
        )
    return found


def within(module: str, *packages: str) -> bool:
    """True if ``module`` is one of ``packages`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def report(violations: Iterator[Import] | list[Import], rule: str) -> str:
    return rule + ":\n" + "\n".join(f"  {v}" for v in violations)


# --- The rules --------------------------------------------------------------------------------

#: The shared kernel drivers/ may use: typed readings and the error hierarchy.
DRIVER_GATEWAY_ALLOWED = ("gateway.model", "gateway.errors")
#: Simulators share only the model types (metric names, units); they raise nothing of the gateway's.
SIMULATOR_GATEWAY_ALLOWED = ("gateway.model",)
#: drivers/ know hardware only: no MQTT, no SQLite, no time-series client, no config files.
DRIVER_FORBIDDEN = ("paho", "sqlite3", "influxdb_client", "tomllib")
#: The exception: drivers/modbus/profiles.py reads its device register tables
#: (drivers/modbus/profiles/*.toml, shipped as package data) with tomllib. That is packaged data --
#: the Modbus map of a meter model, part of the driver -- not user configuration, which is still
#: read only by gateway/config.py.
DRIVER_FORBIDDEN_EXCEPTIONS = {("drivers/modbus/profiles.py", "tomllib")}
#: The composition roots that may wire simulators in place of hardware.
GATEWAY_MAY_IMPORT_SIMULATORS = {
    "gateway/app.py",
    "gateway/cli.py",
    "gateway/demo.py",
    "gateway/simulate.py",
}


def test_drivers_import_only_the_gateway_kernel() -> None:
    bad = [
        i
        for i in scan("drivers")
        if within(i.module, "gateway") and not within(i.module, *DRIVER_GATEWAY_ALLOWED)
    ]
    assert not bad, report(bad, f"drivers/ may import from gateway only {DRIVER_GATEWAY_ALLOWED}")


def test_drivers_know_no_mqtt_sqlite_store_or_config_files() -> None:
    bad = [
        i
        for i in scan("drivers")
        for forbidden in DRIVER_FORBIDDEN
        if within(i.module, forbidden) and (i.file, forbidden) not in DRIVER_FORBIDDEN_EXCEPTIONS
    ]
    assert not bad, report(bad, f"drivers/ must not import {DRIVER_FORBIDDEN}")


def test_driver_exception_is_still_needed() -> None:
    """A stale exception would silently allow a future violation in that file."""
    used = {(i.file, i.module) for i in scan("drivers")}
    assert used >= DRIVER_FORBIDDEN_EXCEPTIONS, "drop exceptions that no longer match an import"


def test_simulators_import_only_gateway_model_and_no_drivers() -> None:
    found = scan("simulators")
    bad = [
        i
        for i in found
        if within(i.module, "gateway") and not within(i.module, *SIMULATOR_GATEWAY_ALLOWED)
    ]
    bad += [i for i in found if within(i.module, "drivers")]
    assert not bad, report(
        sorted(bad, key=lambda i: (i.file, i.line)),
        f"simulators/ may import from gateway only {SIMULATOR_GATEWAY_ALLOWED}, and no drivers",
    )


def test_gateway_core_does_not_import_simulators() -> None:
    bad = [
        i
        for i in scan("gateway")
        if within(i.module, "simulators") and i.file not in GATEWAY_MAY_IMPORT_SIMULATORS
    ]
    assert not bad, report(
        bad, f"only {sorted(GATEWAY_MAY_IMPORT_SIMULATORS)} may import simulators"
    )


def test_allowed_composition_roots_exist() -> None:
    """Keep the allow-list honest: a renamed file must not leave a dead entry behind."""
    missing = [f for f in sorted(GATEWAY_MAY_IMPORT_SIMULATORS) if not (ROOT / f).is_file()]
    assert not missing, f"allow-list names missing files: {missing}"


# --- The checker itself -----------------------------------------------------------------------


def test_scan_sees_the_imports_it_checks() -> None:
    """Guard against a checker that passes because it finds nothing."""
    found = scan("drivers")
    assert {"drivers/modbus/profiles.py", "drivers/base.py"} <= {i.file for i in found}
    tomllib_line = _line_of("drivers/modbus/profiles.py", "import tomllib")
    assert Import("drivers/modbus/profiles.py", tomllib_line, "tomllib") in found
    assert any(within(i.module, "gateway.model") for i in found)


def _line_of(file: str, text: str) -> int:
    lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip() == text)


@pytest.mark.parametrize(
    ("source", "current", "is_package", "expected"),
    [
        ("import paho.mqtt.client as mqtt", "drivers.x", False, ["paho.mqtt.client"]),
        ("from gateway.model import Reading", "drivers.x", False, ["gateway.model"]),
        (
            "from gateway import config, errors",
            "drivers.x",
            False,
            ["gateway.config", "gateway.errors"],
        ),
        ("from gateway import __version__", "drivers.x", False, ["gateway"]),
        ("from .codec import decode", "drivers.modbus.driver", False, ["drivers.modbus.codec"]),
        ("from . import codec", "drivers.modbus.driver", False, ["drivers.modbus.codec"]),
        ("from .. import base", "drivers.modbus.driver", False, ["drivers.base"]),
        ("from .modbus import codec", "drivers", True, ["drivers.modbus.codec"]),
        ("def f():\n    import sqlite3\n", "drivers.x", False, ["sqlite3"]),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    from gateway.config import X\n",
            "drivers.x",
            False,
            ["typing", "gateway.config"],
        ),
        ("importlib.import_module('simulators.site')", "gateway.x", False, ["simulators.site"]),
        ("__import__('influxdb_client')", "drivers.x", False, ["influxdb_client"]),
    ],
)
def test_imports_of(source: str, current: str, is_package: bool, expected: list[str]) -> None:
    found = imports_of(source, file="x.py", current=current, is_package=is_package)
    assert [i.module for i in found] == expected


def test_relative_import_beyond_top_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="beyond the top-level"):
        imports_of("from ... import x", file="x.py", current="drivers.modbus")
