"""Reading a split of many shards under a low open-file limit (datatools/openfiles.py): the soft
limit is raised as far as the split needs, and a hard limit below the need is one line."""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mindspore.mindrecord import FileWriter

from datatools import schema
from datatools.manifest import ShardFiles
from datatools.openfiles import DESCRIPTORS_PER_SHARD, RESERVED_DESCRIPTORS

pytestmark = pytest.mark.slow   # 400 shards written, three MindSpore processes

SHARDS = 400        # MindDataset alone fails between 300 and 400 shards under 1024 descriptors
SOFT_LIMIT = 1024

READ_ALL = """
import sys
from pathlib import Path
import mindspore.dataset as ds
from datatools.openfiles import ensure_open_files
split = sys.argv[1]
files = sorted(str(p) for p in Path(split).glob("shard-*.mindrecord"))
if sys.argv[2] == "ensure":
    ensure_open_files(split, len(files))
rows = sum(1 for _ in ds.MindDataset(files, shuffle=False).create_tuple_iterator(num_epochs=1))
print("rows", rows)
"""


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """A split of SHARDS one-video shards (real MindRecord files of the project's schema)."""
    split = tmp_path_factory.mktemp("many_shards")
    blob, offsets = schema.pack_frames([b"\x00" * 8, b"\x01" * 8])
    for shard in range(SHARDS):
        writer = FileWriter(str(ShardFiles.of(split, shard).record), shard_num=1)
        writer.add_schema(schema.RECORD_SCHEMA, "tiny")
        video_id = f"v{shard}"
        writer.write_raw_data([{schema.VIDEO_ID: video_id, schema.LABEL: 0, schema.NUM_FRAMES: 2,
                                schema.HEIGHT: 1, schema.WIDTH: 1, schema.FRAMES: blob,
                                schema.OFFSETS: offsets,
                                schema.CHECKSUM: schema.sample_checksum(video_id, 0, offsets, blob)}])
        writer.commit()
    return split


def _read(split: Path, mode: str, soft: int, hard: int) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return subprocess.run([sys.executable, "-c", READ_ALL, str(split), mode], preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)


def test_the_soft_limit_is_raised_as_far_as_the_split_needs(many_shards):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * SHARDS
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this host's hard limit {hard} is below the {need} the test needs")
    unraised = _read(many_shards, "as-is", SOFT_LIMIT, hard)
    assert unraised.returncode != 0 and "open files" in unraised.stderr + unraised.stdout
    raised = _read(many_shards, "ensure", SOFT_LIMIT, hard)
    assert raised.returncode == 0, raised.stderr[-2000:]
    assert raised.stdout.splitlines()[-1] == f"rows {SHARDS}"


def test_a_hard_limit_below_the_need_is_one_line(many_shards):
    refused = _read(many_shards, "ensure", 256, 256)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ValueError: {many_shards} has {SHARDS} shards: reading it takes about "
                           f"{RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * SHARDS} open files, above "
                           f"this host's hard limit of 256"), last
    assert "--videos-per-shard" in last
