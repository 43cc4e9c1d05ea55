"""
A pytest plugin for your own tests: the simulator on loopback and a client wired to it.

Installed with the ``testing`` extra (``pip install 'seedream-async[testing]'``, which
brings pytest-asyncio); pytest loads it through the ``pytest11`` entry point, so there is
nothing to import. A service test is three lines::

    async def test_thumbnail(seedream_client, seedream_simulator):
        await my_service.thumbnail(seedream_client, "https://example.com/cat.png")
        assert seedream_simulator.stats.tasks_created == 1

Fixtures:

- ``seedream_simulator``: a running ``Simulator`` (``.url``, ``.stats``, ``.config``;
  change its knobs at any time, even mid-test).
- ``seedream_client``: a ``SeedreamClient`` pointed at it with a callback receiver on
  loopback and test settings (polls in milliseconds, no 60 s safety-poll wait); closed
  after the test.
- ``seedream_polling_client``: the same without callbacks (polling mode).
- ``seedream_settings``: those test ``Settings``; override the fixture to change them.
- ``seedream_simulator_config``: the ``SimulatorConfig`` the simulator starts with;
  override it, or mark a test with ``@pytest.mark.seedream(failure_rate=0.5, ...)``
  (any ``SimulatorConfig`` field: ``latency``, ``failure_rate``, ``callback_drop_rate``,
  ``create_limit``, ``credits``...); a misspelt knob is an error with "did you mean".

``TEST_SETTINGS`` (fast polls and retries, for a client against the simulator) imports
without pytest: ``from seedream_async.testing import TEST_SETTINGS`` works on the core
install alone.
"""

from __future__ import annotations

from ._config import TEST_SETTINGS

__all__ = ["TEST_SETTINGS"]

try:
    import pytest_asyncio  # noqa: F401 (only to know whether the fixtures can be made)
except ImportError:  # no [testing] extra: TEST_SETTINGS still serves the simulator snippet
    pass
else:
    # pytest finds the hook and the fixtures as this module's attributes.
    from ._pytest_plugin import (  # noqa: F401
        pytest_configure,
        seedream_client,
        seedream_polling_client,
        seedream_settings,
        seedream_simulator,
        seedream_simulator_config,
    )
