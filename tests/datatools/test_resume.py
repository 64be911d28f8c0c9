"""Resume after kill -9 mid-run: finished shards are kept, the rest redone, nothing lost or doubled."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from datatools import schema
from datatools.convert import convert
from datatools.manifest import MANIFEST_NAME, STATUS_OK, Settings, read_rows
from tests.datatools import bad_videos
from tests.datatools.test_convert import read_split

LABELS = ("run", "swim", "walk")
VIDEOS = 24
SETTINGS = Settings(short_side=0, quality=90, max_fps=None, videos_per_shard=3, seed=0)


def _source(base):
    """24 CSV entries over 3 labels, hard links to two 320x240 clips (cheap to make, slow enough
    to convert that the run can be killed between shards)."""
    clips = [bad_videos.good(base / f"clip{i}.mp4", num_frames=48, width=320, height=240, seed=i)
             for i in range(2)]
    lines = ["label,youtube_id,time_start,time_end,split"]
    for i in range(VIDEOS):
        label = LABELS[i % len(LABELS)]
        target = base / "videos" / label / f"vid{i:08d}_000000_000010.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(clips[i % 2], target)
        lines.append(f"{label},vid{i:08d},0,10,train")
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(LABELS)))


def _kill_after_first_shard(base) -> None:
    cmd = [sys.executable, "-m", "datatools.convert", "--csv", base / "train.csv",
           "--videos", base / "videos", "--labels", base / "labels.txt", "--out", base / "out",
           "--short-side", "0", "--videos-per-shard", "3", "--workers", "2"]
    proc = subprocess.Popen(list(map(str, cmd)), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list((base / "out").glob("*.done.json")):
            assert proc.poll() is None, "the converter ended before finishing a shard"
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the converter and its loky workers
        proc.wait()


def test_resume_after_kill_keeps_done_shards_and_completes_the_rest(tmp_path):
    _source(tmp_path)
    out = tmp_path / "out"
    _kill_after_first_shard(tmp_path)
    done = {p.name.split(".")[0]: (out / (p.name.split(".")[0] + ".mindrecord")).stat().st_mtime_ns
            for p in out.glob("*.done.json")}
    assert 1 <= len(done) < VIDEOS // 3, f"kill came too late to interrupt the run: {sorted(done)}"
    assert not (out / MANIFEST_NAME).exists()

    result = convert(tmp_path / "train.csv", tmp_path / "videos", tmp_path / "labels.txt", out, SETTINGS)
    assert result.shards_kept == len(done) and result.shards_done == VIDEOS // 3 - len(done)
    for stem, mtime in done.items():   # kept, not rewritten
        assert (out / f"{stem}.mindrecord").stat().st_mtime_ns == mtime
    rows = read_rows(out)
    assert [r.status for r in rows] == [STATUS_OK] * VIDEOS
    ids = Counter(str(s[schema.VIDEO_ID]) for s in read_split(out))
    assert ids == Counter(f"vid{i:08d}_000000_000010" for i in range(VIDEOS))   # once each
    leftovers = [p.name for p in out.iterdir() if p.suffix in (".spool", ".tmp")]
    assert leftovers == []
