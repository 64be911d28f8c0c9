"""Resume after kill -9 mid-run: finished shards are kept, the rest redone, nothing lost or doubled."""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from datatools import schema
from datatools.convert import convert, plan_shards
from datatools.kinetics import read_csv
from datatools.manifest import MANIFEST_NAME, MB, STATUS_OK, Settings, ShardFiles, read_rows
from tests.datatools import bad_videos
from tests.datatools.test_convert import read_split

LABELS = ("run", "swim", "walk")
VIDEOS, PER_SHARD = 12, 3
SHARDS = VIDEOS // PER_SHARD
HELD_SHARD = 2              # the shard of the video the converter cannot open while the test holds it
SETTINGS = Settings(short_side=0, quality=90, max_fps=None, videos_per_shard=PER_SHARD, seed=0,
                    page_size=MB)
OUTER_LIMIT = 120           # seconds for the converter to reach the held video: generous, not a timing


def _youtube_id(i: int) -> str:
    return f"vid{i:08d}"


def _video_id(i: int) -> str:
    return f"{_youtube_id(i)}_000000_000010"


def _source(base: Path) -> None:
    """12 CSV entries over 3 labels, hard links to two small clips (cheap to make)."""
    clips = [bad_videos.good(base / f"clip{i}.mp4", num_frames=16, width=160, height=120, seed=i)
             for i in range(2)]
    lines = ["label,youtube_id,time_start,time_end,split"]
    for i in range(VIDEOS):
        label = LABELS[i % len(LABELS)]
        target = base / "videos" / label / f"{_video_id(i)}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(clips[i % 2], target)
        lines.append(f"{label},{_youtube_id(i)},0,10,train")
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(LABELS)))


def _hold_in_shard(base: Path, index: int) -> Path:
    """The first video of planned shard ``index``, made a file of its own (a lease is on the
    file, not on one of its names)."""
    tasks, _ = plan_shards(read_csv(base / "train.csv"), {n: i for i, n in enumerate(LABELS)},
                           base / "videos", base / "out", SETTINGS, labels_sha256="")
    path = Path(tasks[index].videos[0].source)
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    return path


@contextmanager
def _held(path: Path) -> Iterator[Callable[[], bool]]:
    """Hold a write lease on ``path``: another process's open() of it blocks in the kernel, as on
    a stalled network share, until the lease goes (on leaving, or after the kernel's
    lease-break-time, 45 s by default). Yields a check that some process has tried to open it
    (the lease is then being broken: F_GETLEASE reports the type it is breaking to)."""
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)     # the kernel's notice of the break
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        yield lambda: fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


def _done(out: Path) -> dict[int, int]:
    """mtime of the record of every shard marked done, by shard."""
    return {i: ShardFiles.of(out, i).record.stat().st_mtime_ns for i in range(SHARDS)
            if ShardFiles.of(out, i).done.is_file()}


def _kill_when_stuck(base: Path, held_video: Path) -> None:
    """Run the CLI and kill -9 it once it is stuck opening the held video. With one worker the
    shards go in plan order (and a set page size means no probe opens videos first): the shards
    before the held video's are then marked done, its shard is mid-run, the rest not started."""
    cmd = [sys.executable, "-m", "datatools.convert", "--csv", base / "train.csv",
           "--videos", base / "videos", "--labels", base / "labels.txt", "--out", base / "out",
           "--short-side", "0", "--videos-per-shard", str(PER_SHARD), "--page-mb", "1", "--workers", "1"]
    log = base / "convert.err"
    with _held(held_video) as reached, open(log, "w") as err:
        proc = subprocess.Popen(list(map(str, cmd)), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + OUTER_LIMIT
        try:
            while not reached():
                assert proc.poll() is None, f"the converter ended before the held video:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no open of the held video in {OUTER_LIMIT} s"
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_resume_after_kill_keeps_done_shards_and_completes_the_rest(tmp_path):
    _source(tmp_path)
    held_video = _hold_in_shard(tmp_path, HELD_SHARD)
    out = tmp_path / "out"
    _kill_when_stuck(tmp_path, held_video)
    done = _done(out)
    assert sorted(done) == list(range(HELD_SHARD))
    assert ShardFiles.of(out, HELD_SHARD).spool.is_file()     # left partial by the kill
    assert not (out / MANIFEST_NAME).exists()

    result = convert(tmp_path / "train.csv", tmp_path / "videos", tmp_path / "labels.txt", out, SETTINGS)
    assert (result.shards_kept, result.shards_done) == (HELD_SHARD, SHARDS - HELD_SHARD)
    assert {i: m for i, m in _done(out).items() if i in done} == done     # kept, not rewritten
    rows = read_rows(out)
    assert [r.status for r in rows] == [STATUS_OK] * VIDEOS
    ids = Counter(str(s[schema.VIDEO_ID]) for s in read_split(out))
    assert ids == Counter(_video_id(i) for i in range(VIDEOS))   # once each
    leftovers = [p.name for p in out.iterdir() if p.suffix in (".spool", ".tmp")]
    assert leftovers == []
