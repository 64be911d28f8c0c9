"""A converted split's bytes on disk: allocated, apparent (holes included) and the JPEG payload.

MindRecord files are sparse (datatools/pages.py): a copy that does not keep holes, to object
storage for one, moves the apparent bytes. By default this converts the full case of
docs/design.md §8, 64 synthetic videos of 300 frames at 340x256 (short side 256, q90, ~18.4 KB a
frame) into one shard at the page size ``--page-mb auto`` chooses (the default, as
datatools.convert's), then prints that page and ``datatools.inspect``'s report of the split;
``--videos DIR`` measures a folder of your own instead (every video file below it).

    python -m benchmarks.shards [--videos DIR] [--page-mb auto|32] [--videos-per-shard 64]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.footage import bench_settings, convert_footage, convert_synthetic
from datatools.cli import positive_int, run_cli
from datatools.inspect import inspect_split, report_lines
from datatools.manifest import AUTO, JPEG, MB, page_size_of, read_manifest, read_settings
from datatools.synth import SynthSpec

SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC = 4, 16, SynthSpec(num_frames=300, width=340, height=256)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=Path, default=None,
                   help="a folder of your own videos (every video file below it); default: "
                        f"{SYNTH_CLASSES * SYNTH_PER_CLASS} synthetic videos of {SYNTH_SPEC.num_frames} "
                        f"frames at {SYNTH_SPEC.width}x{SYNTH_SPEC.height}")
    p.add_argument("--page-mb", default=AUTO, help="as datatools.convert's (default auto)")
    p.add_argument("--videos-per-shard", type=positive_int, default=64)
    p.add_argument("--workers", type=positive_int, default=1, help="parallel shard tasks")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p


def main(args: argparse.Namespace) -> int:
    settings = bench_settings(JPEG, videos_per_shard=args.videos_per_shard,
                              page_size=page_size_of(args.page_mb))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        split = (convert_footage(args.videos, work, settings, args.workers) if args.videos else
                 convert_synthetic(work, SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC, settings, args.workers))
        page = read_settings(read_manifest(split)).page_size
        print(f"page {page / MB:g} MiB ({args.page_mb}), {settings.videos_per_shard} videos per shard")
        print("\n".join(report_lines(inspect_split(split, workers=args.workers))))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
