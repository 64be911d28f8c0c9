"""Open-file headroom for reading splits.

MindDataset opens every shard of a split it reads, 3-4 descriptors each (its index database and
the data file), in every process that reads the split, and keeps them open while the pipeline
lives. Kinetics-400 train at 64 videos a shard is ~3,750 shards (~13k descriptors); 1024, the
default soft limit of many Linux hosts, then fails deep inside MindRecord with a message about
"open files limit" after a minute of start-up. Every command that reads a split asks here first.
"""
from __future__ import annotations

import resource
from pathlib import Path

from datatools.manifest import RECORD_SUFFIX, SHARD_PREFIX

__all__ = ["DESCRIPTORS_PER_SHARD", "RESERVED_DESCRIPTORS", "shard_count", "ensure_open_files"]

# Measured with MindSpore 2.10: MindDataset alone read 300 one-video shards and failed at 400
# under 1024 descriptors; the trainer's own pipeline failed at its 284th shard (3.6 a shard).
DESCRIPTORS_PER_SHARD = 4
# The process's own: MindSpore's libraries and threads, sockets, logs, checkpoints.
RESERVED_DESCRIPTORS = 256

_shards_read = 0    # shards of every split this process has opened (pipelines may overlap)


def shard_count(split_dir: str | Path) -> int:
    """Shard files of a split folder (what MindDataset will open)."""
    return sum(1 for _ in Path(split_dir).glob(f"{SHARD_PREFIX}*{RECORD_SUFFIX}"))


def ensure_open_files(split_dir: str | Path) -> int:
    """Raise this process's soft open-file limit as far as reading ``split_dir`` needs, on top of
    the splits it read before; returns the limit. A hard limit below the need is a ValueError
    naming the numbers and the fixes, before any pipeline starts."""
    global _shards_read
    shards = shard_count(split_dir)
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * (_shards_read + shards)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        _shards_read += shards
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ValueError(f"{split_dir} has {shards} shards: reading it takes about {need} open files, "
                         f"above this host's hard limit of {hard} (ulimit -Hn): raise the limit "
                         f"(nofile in /etc/security/limits.conf, or `ulimit -n {need}` where the hard "
                         f"limit allows it), or convert with more --videos-per-shard (fewer shards)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    _shards_read += shards
    return need
