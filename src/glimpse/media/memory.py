"""Make freed image buffers go back to the operating system (glibc only).

glibc serves large allocations with their own ``mmap`` (returned to the system
on ``free``) only above a threshold, and by default it *raises* that threshold
to the size of every mmapped block freed, up to 32 MiB. After the first large
image, decoded pixels (Pillow allocates them in blocks of up to 16 MiB) and the
processor's arrays therefore come from the heap and its per-thread arenas, and
stay counted in the process's RSS after they are freed: measured with
``bench/rss_images.py``, RSS ended 34 % above its start after a hostile-images
run. With a fixed 1 MiB threshold (which also turns the dynamic raising off) it
ended within 1 %. The cost is a ``mmap``/``munmap`` and fresh page faults per
large buffer, small next to decoding or preprocessing it.

``mallopt`` is process-wide, like Pillow's bomb check; setting it twice is harmless.
Off glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["set_mmap_threshold"]

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Serve allocations of at least ``threshold_bytes`` with mmap; 0 leaves glibc alone.

    Returns whether the threshold was set.
    """
    if threshold_bytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold_bytes) != 1:
        logger.warning("glibc refused an mmap threshold of %d bytes", threshold_bytes)
        return False
    return True
