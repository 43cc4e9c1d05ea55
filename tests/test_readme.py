"""
Every ``python`` snippet of the README runs as written, as in ``python -m asyncio`` (top-level
``await``), against the simulator: the environment a reader would set up, nothing rewritten.

A snippet preceded by ``<!-- continues -->`` runs in the namespace of the one before it.
The environment: ``$APIKLEY_BASE_URL`` is the simulator, whose tunnel delivers callbacks for
``https://hooks.example.com`` to ``127.0.0.1:8081`` (what a real tunnel does);
``$SEEDREAM_REDIS_URL`` a real Redis; the working directory holds ``photos/cabin.png``.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from seedream_async.simulator import Simulator, SimulatorConfig, fake_png
from tests.conftest import sdk_tasks
from tests.redis_server import RedisServer

README = Path(__file__).parent.parent / "README.md"
CONTINUES = "<!-- continues -->"


def chains() -> list[list[tuple[int, str]]]:
    """The README's python snippets as (line, code), grouped by ``continues``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    found: list[list[tuple[int, str]]] = []
    n = 0
    while n < len(lines):
        if lines[n].strip() == "```python":
            start = n + 1
            end = lines.index("```", start)
            code = "\n".join(lines[start:end]) + "\n"
            previous = next((line for line in reversed(lines[:n]) if line.strip()), "")
            if previous.strip() == CONTINUES and found:
                found[-1].append((start + 1, code))
            else:
                found.append([(start + 1, code)])
            n = end
        n += 1
    return found


CHAINS = chains()


@pytest.fixture
async def readme_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> AsyncIterator[Simulator]:
    config = SimulatorConfig(
        callback_tunnels={"https://hooks.example.com": "http://127.0.0.1:8081"}
    )
    async with Simulator(config) as sim:
        monkeypatch.setenv("APIKLEY_API_KEY", "demo")
        monkeypatch.setenv("APIKLEY_BASE_URL", str(sim.url))
        monkeypatch.setenv("SEEDREAM_ALLOW_PRIVATE_DOWNLOADS", "1")
        monkeypatch.setenv("SEEDREAM_REDIS_URL", redis_server.url)
        monkeypatch.chdir(tmp_path)
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "cabin.png").write_bytes(fake_png("cabin", 0, 2048, "4:3"))
        yield sim


def task_stacks() -> str:
    """Where every task of the loop waits (a hang's evidence)."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    return out.getvalue()


def test_the_readme_has_snippets() -> None:
    assert len(CHAINS) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("chain", CHAINS, ids=[f"line{chain[0][0]}" for chain in CHAINS])
async def test_snippet_runs_as_written(
    readme_world: Simulator, chain: list[tuple[int, str]]
) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    for line, code in chain:
        compiled = compile(code, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        outcome = eval(compiled, namespace)  # noqa: S307 (our own README, run on purpose)
        if inspect.iscoroutine(outcome):
            try:
                async with asyncio.timeout(60):
                    await outcome
            except TimeoutError:
                pytest.fail(f"README.md:{line} hung for 60 s; its tasks:\n{task_stacks()}")
    await asyncio.sleep(0)
    assert sdk_tasks() == [], "a snippet left an SDK task running"


def test_no_snippet_leans_on_an_undefined_name() -> None:
    """Running misses names used only in functions never called: every name a chain uses is
    bound in it, imported, or a builtin (a name on a ``# your code`` line is the reader's)."""
    for chain in CHAINS:
        bound: set[str] = set()
        for line, code in chain:
            tree = ast.parse(code)
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    bound.add(node.id)
                elif isinstance(node, ast.alias):
                    bound.add((node.asname or node.name).split(".")[0])
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    bound.add(node.name)
                elif isinstance(node, ast.arg):
                    bound.add(node.arg)
            readers = {n + 1 for n, text in enumerate(code.splitlines()) if "# your code" in text}
            used = {
                node.id
                for node in ast.walk(tree)
                if isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and node.lineno not in readers
            }
            missing = used - bound - set(dir(builtins))
            assert not missing, f"README.md:{line} uses undefined {sorted(missing)}"
