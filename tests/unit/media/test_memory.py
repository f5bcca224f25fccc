"""The mmap threshold: freed image-sized buffers must leave the process's RSS (glibc)."""

import subprocess
import sys

import pytest

from glimpse.media.memory import set_mmap_threshold

# Allocate, touch and free an 8 MiB buffer a few times (as decoding one image after another
# does), then print how much RSS the freed buffers still hold.
_PROBE = """
import ctypes, sys
from glimpse.media.memory import set_mmap_threshold
threshold = int(sys.argv[1])
print(set_mmap_threshold(threshold))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) * 1024

size = 8 * 2**20
before = rss()
for _ in range(4):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(rss() - before)
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _kept_after_frees(threshold: int) -> tuple[bool, int]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(threshold)], capture_output=True, text=True, timeout=60, check=True
    )
    applied, kept = result.stdout.split()
    return applied == "True", int(kept)


@linux_only
def test_with_the_threshold_freed_buffers_leave_rss():
    applied, kept = _kept_after_frees(1024 * 1024)
    assert applied
    assert kept < 2 * 2**20


@linux_only
def test_without_it_glibc_keeps_them_which_is_why_it_is_set():
    """glibc's dynamic threshold: after the first free, the next 8 MiB come from the heap and stay."""
    applied, kept = _kept_after_frees(0)
    assert not applied
    assert kept >= 6 * 2**20  # one whole buffer, give or take a few pages


def test_zero_leaves_the_allocator_alone():
    assert set_mmap_threshold(0) is False
