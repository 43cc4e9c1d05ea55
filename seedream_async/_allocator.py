"""
One allocation that spares asyncio's default event loop three system calls per socket read.

On glibc, asyncio's selector transports read a socket with ``sock.recv(256 KiB)``: a 256 KiB
bytes object, then shrunk to the bytes read. glibc serves a block that large with ``mmap``
until its dynamic threshold rises, which happens when a large mapped block is *freed*; a
shrunk block stays mapped (``mremap``) and is freed small, so asyncio's reads alone never
raise it. Each read then costs mmap, mremap, munmap and page faults: ~35 us of kernel time
per edit on this project's machine (two reads per edit), or nothing, depending on whether
something in the process happened to free a large block earlier. Freeing one 1 MiB block
raises the threshold, exactly as glibc does on its own after any large free; from then on
those buffers come from the heap. (uvloop reads into a buffer of its own and never pays.)

The library never calls this: it changes how the whole process allocates, and the process
is its user's. The CLI and the benchmarks, which own theirs, do; so can a service (README).
"""

from __future__ import annotations


def warm_allocator() -> None:
    """Raise glibc's dynamic ``mmap`` threshold above asyncio's 256 KiB read buffer.

    Harmless elsewhere (one short-lived allocation), and without effect when
    ``MALLOC_MMAP_THRESHOLD_`` fixes the threshold.
    """
    block = bytearray(1 << 20)
    del block
