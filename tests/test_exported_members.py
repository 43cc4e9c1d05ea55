"""One public face: ``__all__`` is sorted and lists every public name."""

from __future__ import annotations

import importlib
import importlib.resources
import pkgutil
import subprocess
import sys
import types

import pytest

import seedream_async


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(seedream_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert seedream_async.__all__ == sorted(seedream_async.__all__)
    assert set(seedream_async.__all__) == public


def test_every_export_is_documented() -> None:
    for name in seedream_async.__all__:
        assert getattr(seedream_async, name).__doc__, name


def test_every_error_and_warning_is_exported() -> None:
    """A user catches what the package raises or warns: each such class has a public name.

    Internal exceptions (caught inside the SDK) derive from neither, so they need no name.
    """
    for info in pkgutil.walk_packages(seedream_async.__path__, "seedream_async."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, seedream_async.SeedreamError | Warning)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                assert name in seedream_async.__all__, f"{info.name}.{name}"


MODULES = sorted(
    info.name for info in pkgutil.walk_packages(seedream_async.__path__, "seedream_async.")
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    """No circular imports: each module imports first in a fresh interpreter (as aiohttp tests)."""
    subprocess.run([sys.executable, "-W", "error", "-c", f"import {module}"], check=True)


def test_py_typed_shipped() -> None:
    assert importlib.resources.files("seedream_async").joinpath("py.typed").is_file()


@pytest.mark.parametrize(
    ("module", "construct", "extra"),
    [
        ("redis", "RedisCoordinator('redis://127.0.0.1:1')", "redis"),
        ("opentelemetry", "OpenTelemetryHook()", "otel"),
    ],
)
def test_without_the_extra_a_clear_error_names_the_install(
    module: str, construct: str, extra: str
) -> None:
    """The package imports without an extra; its feature then names the install line."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import seedream_async\n"
        "try:\n"
        f"    seedream_async.{construct}\n"
        "except seedream_async.ExtraNotInstalled as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'seedream-async[{extra}]'" in out.stdout
    assert issubclass(seedream_async.ExtraNotInstalled, ImportError)
