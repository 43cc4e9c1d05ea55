"""The CLI's one allocation that keeps asyncio's socket reads off ``mmap`` (glibc)."""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys

import pytest

from seedream_async import _allocator, cli

# In a fresh interpreter: is a 256 KiB block (asyncio's read buffer) served from the brk
# heap, before and after the CLI warms the allocator? Outside the heap means mmap: a block
# that large costs mmap, mremap (asyncio shrinks it to what was read) and munmap per read.
PROBE = """
import ctypes, importlib.util, sys

def in_heap() -> bool:
    block = bytearray(256 * 1024)
    address = ctypes.addressof((ctypes.c_char * 1).from_buffer(block))
    del block[16:]  # shrunk before it is freed, as asyncio's buffers are: no threshold change
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                low, high = (int(x, 16) for x in line.split()[0].split("-"))
                return low <= address < high
    return False

before = in_heap()  # first: nothing imported yet has had a chance to free a large block
spec = importlib.util.spec_from_file_location("_allocator", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.warm_allocator()
print(before, in_heap())
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's dynamic mmap threshold (CI runs on Linux with glibc)",
)


@glibc
def test_warming_moves_asyncio_read_buffers_off_mmap() -> None:
    # A bare interpreter (-I -S), the module loaded by its path: importing the package would
    # compile and free enough (in a fresh clone) to raise the threshold before the first look.
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, _allocator.__file__],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["False", "True"]  # mmap'd before, from the heap after


def test_the_cli_warms_the_allocator_before_its_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "warm_allocator", lambda: calls.append("warmed"))

    async def command(_: argparse.Namespace) -> int:
        calls.append("ran")
        return 0

    assert cli.run(argparse.Namespace(command="batch", run=command, simulate=True)) == 0
    assert calls == ["warmed", "ran"]
