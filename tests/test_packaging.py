"""The dependency floors pyproject.toml states are the versions ``scripts/floor`` tests."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
#: The extras a user's process imports (testing, docs and dev only serve development).
EXTRAS = ("cli", "redis", "otel", "speed", "report")


def test_the_floor_script_tests_the_floors_pyproject_states() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = [*project["dependencies"], *(r for x in EXTRAS for r in extras[x])]
    floors: dict[str, Version] = {}
    for dependency in map(Requirement, runtime):
        (lowest,) = [spec for spec in dependency.specifier if spec.operator == ">="]
        floors[dependency.name] = Version(lowest.version)
    pinned: dict[str, Version] = {}
    for line in (ROOT / "scripts" / "floor-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            constraint = Requirement(line)
            (exact,) = constraint.specifier
            assert exact.operator == "==", line
            pinned[constraint.name] = Version(exact.version)
    assert pinned == floors
