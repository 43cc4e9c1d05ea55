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


def test_modules_import_alone() -> None:
    """No circular imports: each module imports on its own, in any order."""
    for info in pkgutil.iter_modules(seedream_async.__path__):
        importlib.import_module(f"seedream_async.{info.name}")


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
