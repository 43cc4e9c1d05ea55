"""One public face: ``__all__`` is sorted and lists every public name."""

from __future__ import annotations

import importlib
import importlib.resources
import pkgutil
import types

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
