"""How a shard's samples lie in its MindRecord file, and the write order that leaves no page half empty.

MindRecord 2.10 lays a file out as a header of ``header_size`` bytes, then fixed slots of
``page_size`` bytes, page ``i`` at ``header_size + i * page_size`` (docs/design.md §8 has the
measurements). Blob pages hold the samples' frames and offsets, whole samples in write order; a
sample that does not fit the last blob page opens the next one. The raw page holds the scalar
fields (~100 bytes a sample) and is created by the first write call, right after that call's blob
pages. The unused tail of every page but the last is a hole: the file is sparse, and a copy that
does not keep holes (object storage, most upload tools) moves the holes too.

Hence ``write_calls``: a shard is written in one call, which puts the raw page last, where it ends
the file with no hole behind it, in the order of ``pack_pages``, which fills each blob page first.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["MIN_HEADER", "MAX_HEADER", "ONE_CALL_PAGES", "header_size", "sample_bytes", "pack_pages",
           "write_calls", "disk_bytes"]

MIN_HEADER, MAX_HEADER = 1 << 14, 1 << 27
HEADER_BYTES_PER_PAGE = 512                     # page metadata in the header, generous
SAMPLE_OVERHEAD = 1024                          # per-sample bytes besides frames and offsets
PACKING_STEPS = 1 << 13                         # a page's capacity in packing units
ONE_CALL_PAGES = 32                             # a shard of more pages is written a page per call


def header_size(page_size: int, videos_per_shard: int) -> int:
    """Header bytes for the most pages a shard can take (one per video, plus the scalar fields)."""
    pages = videos_per_shard + 2
    return min(1 << math.ceil(math.log2(MIN_HEADER + pages * HEADER_BYTES_PER_PAGE)), MAX_HEADER)


def sample_bytes(num_frames: int, frame_bytes: int) -> int:
    """Bytes one video's sample takes in a page, at least (an upper bound of what MindRecord stores)."""
    return frame_bytes + 8 * (num_frames + 1) + SAMPLE_OVERHEAD


def pack_pages(sizes: Sequence[int], page_size: int) -> list[list[int]]:
    """The indices of ``sizes`` grouped into the pages to write them in, each page as full as can be.

    Page after page, the remaining samples whose sizes add up closest to ``page_size`` without
    passing it fill the next page (a subset sum over the sizes in units of 1/PACKING_STEPS page,
    rounded up, so a page's picks always fit), in their given order; the last page gets what is
    left. MindRecord fills pages greedily in write order, so with every size an upper bound of what
    it stores, writing the pages one after another ends each of its pages at or after the packed
    one: it never takes more pages than packed.
    """
    unit = max(1, page_size // PACKING_STEPS)
    units = [max(1, -(-size // unit)) for size in sizes]
    capacity = page_size // unit
    if any(u > capacity for u in units):
        raise ValueError(f"a sample of {max(sizes)} bytes does not fit a page of {page_size}")
    pages, left = [], list(range(len(sizes)))
    while left:
        chosen = set(_fullest_subset([units[i] for i in left], capacity))
        pages.append([i for k, i in enumerate(left) if k in chosen])
        left = [i for k, i in enumerate(left) if k not in chosen]
    return pages


def write_calls(sizes: Sequence[int], page_size: int) -> list[list[int]]:
    """The samples of each write call, in write order: the pages of ``pack_pages`` in one call,
    which puts the raw page last. A call holds about three copies of its frames in memory, so a
    shard of more than ONE_CALL_PAGES pages is written a page per call instead: the raw page then
    follows the first page and its slot, a hole under 1/ONE_CALL_PAGES of the file, stays.
    """
    pages = pack_pages(sizes, page_size)
    return pages if len(pages) > ONE_CALL_PAGES else [[i for page in pages for i in page]]


def _fullest_subset(units: list[int], capacity: int) -> list[int]:
    """Positions of a subset of ``units`` with the largest sum not above ``capacity``.

    ``reach[k]`` is the set of sums the first k items can make, as the bits of an int; walking back
    from the best sum takes item k-1 only where the first k-1 items could not make the rest.
    """
    mask = (1 << (capacity + 1)) - 1
    reach = [1]
    for u in units:
        reach.append((reach[-1] | reach[-1] << u) & mask)
    total, picked = reach[-1].bit_length() - 1, []
    for k in range(len(units), 0, -1):
        if not reach[k - 1] >> total & 1:
            picked.append(k - 1)
            total -= units[k - 1]
    return picked


def disk_bytes(paths: Iterable[str | Path]) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files that exist among ``paths``: their holes are the
    difference, what a copy that does not keep holes moves on top of the allocated bytes."""
    allocated = apparent = 0
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent
