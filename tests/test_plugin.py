"""The pytest plugin as a user meets it: a fresh project, strict asyncio mode, a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

USER_TESTS = """
import pytest

from seedream_async import SeedreamClient


@pytest.mark.asyncio
async def test_edit(seedream_client: SeedreamClient, seedream_simulator) -> None:
    result = await seedream_client.edit(prompt="x", image_urls=["https://a.example/b.png"])
    assert result.urls
    assert seedream_simulator.stats.tasks_created == 1


@pytest.mark.asyncio
@pytest.mark.seedream(credits=0.0)
async def test_out_of_credits(seedream_polling_client: SeedreamClient) -> None:
    from seedream_async import InsufficientCredits

    with pytest.raises(InsufficientCredits):
        await seedream_polling_client.edit(prompt="x", image_urls=["https://a.example/b.png"])


@pytest.mark.asyncio
@pytest.mark.seedream(no_such_knob=1)
async def test_typo(seedream_simulator) -> None:
    pass


@pytest.mark.asyncio
@pytest.mark.seedream(failure_rat=0.5)
async def test_near_miss(seedream_simulator) -> None:
    pass
"""


def test_the_plugin_works_in_a_users_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-W",
        "error",
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*no simulator knob*no_such_knob*"])
    result.stdout.fnmatch_lines(["*no simulator knob*failure_rat*did you mean*failure_rate*"])


def test_the_simulator_snippet_imports_without_pytest() -> None:
    """The README's simulator snippet (``TEST_SETTINGS``) comes before the ``[testing]``
    extra is named: it must work where pytest is not installed."""
    blocked = (
        "import sys; sys.modules['pytest'] = sys.modules['pytest_asyncio'] = None\n"
        "from seedream_async.simulator import Simulator, SimulatorConfig\n"
        "from seedream_async.testing import TEST_SETTINGS\n"
        "print(TEST_SETTINGS.allow_private_downloads)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
