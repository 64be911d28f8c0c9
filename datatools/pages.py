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
What is left is the last blob page's tail, which depends on how the page size divides the shard's
samples: ``choose_page`` picks the split's page size from a few probe videos' sizes
(``--page-mb auto``, ``datatools.plan.settle_page``).
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from datatools.manifest import DEFAULT_PAGE, MB

__all__ = ["MIN_HEADER", "MAX_HEADER", "ONE_CALL_PAGES", "PageRange", "AUTO_PAGES", "header_size",
           "sample_bytes", "pack_pages", "write_calls", "layout_ratio", "choose_page", "disk_bytes"]

MIN_HEADER, MAX_HEADER = 1 << 14, 1 << 27
HEADER_BYTES_PER_PAGE = 512                     # page metadata in the header, generous
SAMPLE_OVERHEAD = 1024                          # per-sample bytes besides frames and offsets
PACKING_STEPS = 1 << 13                         # a page's capacity in packing units
ONE_CALL_PAGES = 32                             # a shard of more pages is written a page per call
RAW_BYTES_PER_SAMPLE = 128                      # a sample's scalar fields in the raw page, about
# choose_page's sizes are an estimate: it judges a page by the mean ratio over the sizes scaled
# evenly across at least +-SIZE_SPREAD, at SPREAD_POINTS scales.
SIZE_SPREAD = 0.02
SPREAD_POINTS = 9


@dataclass(frozen=True)
class PageRange:
    """The page sizes ``choose_page`` weighs: ``floor``, ``floor + step``, ... up to ``ceiling``."""

    floor: int
    ceiling: int
    step: int

    def sizes(self) -> range:
        return range(self.floor, self.ceiling + 1, self.step)


# --page-mb auto: whole MiB from the default page, so that no video that fits it is refused as too
# large, to 128 MiB.
AUTO_PAGES = PageRange(DEFAULT_PAGE, 128 * MB, MB)


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
    one: it never takes more pages than packed. A sample that rounds up to more than a page
    (a page size that is not a multiple of the unit) counts as a full page, so it is packed alone.
    """
    if any(size > page_size for size in sizes):
        raise ValueError(f"a sample of {max(sizes)} bytes does not fit a page of {page_size}")
    unit = max(1, page_size // PACKING_STEPS)
    capacity = page_size // unit
    units = [min(capacity, max(1, -(-size // unit))) for size in sizes]
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
    return [[i for page in pages for i in page]] if _one_call(pages) else pages


def _one_call(pages: list[list[int]]) -> bool:
    """Whether ``write_calls`` writes a shard of these packed pages in one call."""
    return len(pages) <= ONE_CALL_PAGES


def layout_ratio(sizes: Sequence[int], page_size: int) -> float:
    """Apparent / allocated bytes of a shard of samples of ``sizes`` as ``write_calls`` lays it out.

    Apparent: the header, a slot per blob page, then the raw page (one call) or, written a page
    per call, the last blob page's bytes (the raw page took the second slot). Allocated: the
    header, the samples and the raw page.
    """
    pages = pack_pages(sizes, page_size)
    header, raw = header_size(page_size, len(sizes)), RAW_BYTES_PER_SAMPLE * len(sizes)
    end = raw if _one_call(pages) else sum(sizes[i] for i in pages[-1])
    return (header + len(pages) * page_size + end) / (header + sum(sizes) + raw)


def choose_page(sizes: Sequence[int], count: int, pages: PageRange = AUTO_PAGES) -> tuple[int, float]:
    """The page size of ``pages`` with the least expected ``layout_ratio`` of a shard of ``count``
    samples of ``sizes`` (a few probe videos', cycled), and that ratio; ties go to the smaller page.

    The expected ratio is the mean over the sizes scaled across ``_spread``, from 1/(1 + spread)
    to 1 + spread (geometrically: a small split's spread can pass 1, and a size scaled by
    1 - spread would be negative, as was the ratio logged), so a page that the probe's samples
    fill to the byte takes one more page a shard for samples a little larger.
    A page must hold the largest sample with that margin; if none of ``pages`` does, the ceiling
    (a larger sample will be refused as too large, as it would with any page of the range).
    """
    shard = [sizes[i % len(sizes)] for i in range(count)]
    spread = _spread(sizes, count)
    scales = [(1 + spread) ** (2 * k / (SPREAD_POINTS - 1) - 1) for k in range(SPREAD_POINTS)]
    candidates = [p for p in pages.sizes() if p >= max(sizes) * (1 + spread)] or [pages.ceiling]
    expected = {p: statistics.fmean(_scaled_ratio(shard, p, x) for x in scales) for p in candidates}
    best = min(candidates, key=expected.__getitem__)
    return best, expected[best]


def _scaled_ratio(sizes: Sequence[int], page_size: int, scale: float) -> float:
    """``layout_ratio`` of ``sizes`` times ``scale``, without those that the page cannot hold (the
    converter refuses them as too large)."""
    scaled = (round(size * scale) for size in sizes)
    return layout_ratio([size for size in scaled if size <= page_size], page_size)


def _spread(sizes: Sequence[int], count: int) -> float:
    """The relative error to allow for in a shard's sizes against ``sizes`` cycled: twice the
    standard error of the probe's mean and of a shard's (``len(sizes)`` and ``count`` draws from
    videos as spread as ``sizes``), at least SIZE_SPREAD."""
    if len(sizes) < 2:
        return SIZE_SPREAD
    cv = statistics.stdev(sizes) / statistics.fmean(sizes)
    return max(SIZE_SPREAD, 2 * cv * math.sqrt(1 / len(sizes) + 1 / count))


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
