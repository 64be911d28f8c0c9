"""glibc malloc settings for the loader: megabyte buffers reused instead of page-faulted anew.

Each training clip allocates megabyte buffers: MindDataset copies a video's 3–8 MB ``frames``
blob about five times between the file and the map op, then come the clip and the batch. glibc
serves blocks above its mmap threshold (128 KiB, rising with freed blocks up to 32 MiB) with fresh
mappings, and the dataset's threads get arenas of their own that give freed memory back to the
kernel, so every byte of those copies is first a page fault and the kernel zeroing the page:
~600 faults a clip, about a tenth of the loader's CPU time (benchmarks/README.md, Loader). One
arena, an mmap threshold above the largest buffer and a trim threshold that keeps freed memory
make the copies land in reused memory (1 fault a clip). The price: the process keeps up to
``TRIM_THRESHOLD`` of freed heap instead of returning it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "MALLOC_VARIABLES", "keep_large_buffers"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 256 << 20      # above a 10-clip x 3-crop eval row (~160 MB of uint8 views)
TRIM_THRESHOLD = 512 << 20
# A user's own tuning (glibc reads these at start-up) is left alone.
MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                    "GLIBC_TUNABLES", "LD_PRELOAD")
_applied: bool | None = None


def keep_large_buffers() -> bool:
    """Apply the settings once per process; False (nothing changed) without glibc or when the
    environment already tunes malloc (or preloads another allocator)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(v) for v in MALLOC_VARIABLES):
        return False
    libc = ctypes.CDLL(None)
    done = all(libc.mallopt(option, value) == 1 for option, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    logger.debug("glibc malloc: one arena, mmap threshold %d MiB, trim threshold %d MiB (%s)",
                 MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, "set" if done else "refused")
    return done
