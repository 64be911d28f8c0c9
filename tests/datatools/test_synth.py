"""datatools.synth: Kinetics layout and CSV format, byte-identical output from the same seed."""
from __future__ import annotations

import csv

import numpy as np

from datatools.kinetics import find_video, read_csv
from datatools.manifest import JPEG, Settings
from datatools.synth import CLASSES, SynthSpec, make_dataset, render_video
from datatools.video import encode_video

SPEC = SynthSpec(num_frames=8, width=48, height=32)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_csv_and_determinism(tmp_path):
    train, val = make_dataset(tmp_path / "a", 3, 2, 1, seed=5, spec=SPEC)
    with open(train, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "youtube_id", "time_start", "time_end", "split"]
    assert {r[4] for r in rows[1:]} == {"train"} and len(rows) == 1 + 3 * 2
    entries = read_csv(val)
    assert [e.label for e in entries] == list(CLASSES[:3])
    for e in read_csv(train) + entries:
        path = find_video(tmp_path / "a" / "videos", e)
        assert path is not None and path.parent.name == e.label
    video = encode_video(find_video(tmp_path / "a" / "videos", entries[0]),
                         Settings(0, 90, None, videos_per_shard=1, seed=0, codec=JPEG))
    assert (len(video.frames), video.width, video.height) == (8, 48, 32)
    make_dataset(tmp_path / "b", 3, 2, 1, seed=5, spec=SPEC)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    make_dataset(tmp_path / "c", 3, 2, 1, seed=6, spec=SPEC)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_classes_differ_in_time_not_in_a_single_frame():
    """Moving up and down mirror each other in time: reversing one matches the other's trend."""
    spec = SynthSpec(num_frames=16, width=96, height=96)

    def blob_height_trend(class_index, seed):
        frames = render_video(class_index, np.random.default_rng(seed), spec).astype(np.float32)
        motion = np.abs(np.diff(frames, axis=0)).sum(axis=(0, 2, 3))   # rows that change
        rows = np.arange(spec.height)
        early = np.abs(frames[1] - frames[0]).sum(axis=(1, 2)) @ rows
        late = np.abs(frames[-1] - frames[-2]).sum(axis=(1, 2)) @ rows
        return (late - early) / motion.sum()

    assert all(blob_height_trend(0, s) < 0 for s in range(3))   # moving up: rows decrease
    assert all(blob_height_trend(1, s) > 0 for s in range(3))   # moving down
