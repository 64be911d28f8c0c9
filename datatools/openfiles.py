"""Open-file headroom for reading splits.

MindDataset opens every shard of a split it reads, 3-4 descriptors each (its index database and
the data file), in every process that reads the split, and keeps them open while the pipeline
lives. Kinetics-400 train at 64 videos a shard is ~3,750 shards (~13k descriptors); 1024, the
default soft limit of many Linux hosts, then fails deep inside MindRecord with a message about
"open files limit" after a minute of start-up. Every command that opens a whole split (the
trainer's train, eval and 310 preprocess, through ``trainer.data``) gets its shards from
``split_shards``, which asks here first. ``datatools.inspect`` (and sync's inspect after a pull)
opens one shard at a time in each of its ``--workers`` children, so it needs no more than it has.
"""
from __future__ import annotations

import resource
from pathlib import Path

from datatools.manifest import ok_shard_paths

__all__ = ["DESCRIPTORS_PER_SHARD", "RESERVED_DESCRIPTORS", "ensure_open_files", "split_shards"]

# Measured with MindSpore 2.10: MindDataset alone read 300 one-video shards and failed at 400
# under 1024 descriptors; the trainer's own pipeline failed at its 284th shard (3.6 a shard).
DESCRIPTORS_PER_SHARD = 4
# The process's own: MindSpore's libraries and threads, sockets, logs, checkpoints.
RESERVED_DESCRIPTORS = 256

_splits_read: dict[str, int] = {}    # shards of each split this process reads (pipelines overlap)


def ensure_open_files(split_dir: str | Path, shards: int) -> int:
    """Raise this process's soft open-file limit as far as reading ``shards`` shard files of
    ``split_dir`` needs, on top of the other splits it reads (a training process holds train and
    val open; reading a split again adds nothing); returns the limit. A hard limit below the
    need is a ValueError naming the numbers and the fixes, before any pipeline starts."""
    _splits_read[str(Path(split_dir).resolve())] = shards
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * sum(_splits_read.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ValueError(f"{split_dir} has {shards} shards: reading it takes about {need} open files, "
                         f"above this host's hard limit of {hard} (ulimit -Hn): raise the limit "
                         f"(nofile in /etc/security/limits.conf, or `ulimit -n {need}` where the hard "
                         f"limit allows it), or convert with more --videos-per-shard (fewer shards)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return need


def split_shards(split_dir: str | Path) -> list[str]:
    """The shard files of the split in ``split_dir`` that hold converted videos
    (``manifest.ok_shard_paths``), once this process may open them all at once
    (``ensure_open_files``): the one place a reader of a whole split gets its files from."""
    shards = ok_shard_paths(split_dir)
    ensure_open_files(split_dir, len(shards))
    return shards
