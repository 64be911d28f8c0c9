"""trainer.heap on a real MindDataset: reading megabyte blobs stops page-faulting fresh memory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mindspore.mindrecord import FileWriter

from trainer.heap import MALLOC_VARIABLES

REPO = Path(__file__).resolve().parents[2]
# Faults per row over passes 3-5 of a shuffled MindDataset of 3 MB byte blobs (two warm up).
READ = """
import resource, sys
import mindspore.dataset as ds
from trainer.heap import keep_large_buffers
if sys.argv[2] == "on":
    assert keep_large_buffers()
ds.config.set_num_parallel_workers(1)
rows = 0
for epoch in range(5):
    if epoch == 2:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    data = ds.MindDataset([sys.argv[1]], columns_list=["frames"], shuffle=True)
    data = data.map(lambda blob: blob[:1], input_columns=["frames"], python_multiprocessing=False)
    rows += (epoch > 1) * sum(1 for _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / rows)
"""


pytestmark = pytest.mark.slow   # MindDataset reads in subprocesses


def _start_reader(path: Path, setting: str) -> subprocess.Popen:
    """A fresh process reading ``path`` (malloc settings are per process, fixed at start-up)."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARIABLES}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-c", READ, str(path), setting], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _faults_per_row(reader: subprocess.Popen) -> float:
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err[-2000:]
    return float(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_large_blobs_are_read_into_reused_memory(tmp_path):
    path = tmp_path / "blobs.mindrecord"
    writer = FileWriter(str(path), 1)
    writer.add_schema({"frames": {"type": "bytes"}, "label": {"type": "int32"}}, "blobs")
    rng = np.random.default_rng(0)
    writer.write_raw_data([{"frames": rng.bytes(3 << 20), "label": i} for i in range(12)])
    writer.commit()
    # both at once: page faults are counted per process, and the two imports overlap
    readers = [_start_reader(path, setting) for setting in ("off", "on")]
    off, on = (_faults_per_row(reader) for reader in readers)
    assert off > 200 and on * 10 < off, (off, on)     # a 3 MB blob is 768 pages
