"""What a re-run over an existing output must refuse, verify, redo or retry, and the failures
that must stop it in one line: another label file, damaged kept shards, videos that can now be
converted, a second converter, a full disk."""
from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from datatools import convert as convert_cli
from datatools.cli import run_cli
from datatools.convert import convert, summary_lines
from datatools.lock import output_lock
from datatools.manifest import LOCK_NAME, MANIFEST_NAME, Settings, ShardFiles
from tests.datatools import bad_videos

SETTINGS = Settings(short_side=0, quality=80, max_fps=None, videos_per_shard=2, seed=0, page_size=1 << 20)
LABELS = ("run", "walk")
NO_SPACE_TAIL = ": free space or use another --out; the run resumes where it stopped"


def _source(base: Path, count: int = 6, skip: tuple[int, ...] = (), distinct: int = 6, **video) -> None:
    """``count`` CSV entries over two labels, a good video for each except those in ``skip``;
    entries from ``distinct`` on are hard links to the earlier videos (cheap to make)."""
    lines = ["label,youtube_id,time_start,time_end,split"]
    for i in range(count):
        label = LABELS[i % 2]
        path = base / "videos" / label / f"v{i}_000000_000010.mp4"
        if i not in skip and i < distinct:
            bad_videos.good(path, seed=i, **video)
        elif i not in skip:
            os.link(path.with_name(f"v{i % distinct}_000000_000010.mp4"), path)
        lines.append(f"{label},v{i},0,10,train")
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(LABELS)))


def _convert(base: Path, out: Path | None = None):
    return convert(base / "train.csv", base / "videos", base / "labels.txt", out or base / "out", SETTINGS)


def _argv(base: Path, out: Path) -> list[str]:
    return ["--csv", str(base / "train.csv"), "--videos", str(base / "videos"), "--labels",
            str(base / "labels.txt"), "--out", str(out), "--short-side", "0", "--quality", "80",
            "--videos-per-shard", "2", "--page-mb", "1"]


def _files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of the shards: equal means not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()
            if p.name != MANIFEST_NAME}


def _shard_names(out: Path, *indices: int) -> set[str]:
    """The files a done shard has."""
    return {p.name for i in indices for p in (ShardFiles.of(out, i).record, ShardFiles.of(out, i).db,
                                              ShardFiles.of(out, i).done)}


def _video(result, number: int):
    return next(r for r in result.rows if r.video_id.startswith(f"v{number}_"))


def test_a_resume_with_another_label_file_is_refused(tmp_path):
    _source(tmp_path)
    _convert(tmp_path)
    before = _files(tmp_path / "out")
    (tmp_path / "labels.txt").write_text("walk 0\nrun 1\n")           # the same names, swapped
    with pytest.raises(ValueError) as caught:
        _convert(tmp_path)
    message, out, labels = str(caught.value), re.escape(str(tmp_path / "out")), re.escape(str(tmp_path))
    assert re.fullmatch(rf"{out} was converted with another label file than {labels}/labels\.txt "
                        r"\(sha256 [0-9a-f]{12}… vs [0-9a-f]{12}…\): use the original label file or a "
                        r"new --out", message), message
    assert _files(tmp_path / "out") == before
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_damaged_kept_shard_is_redone_and_the_others_are_kept(tmp_path):
    _source(tmp_path)
    _convert(tmp_path)
    damaged = ShardFiles.of(tmp_path / "out", 1).record
    with open(damaged, "r+b") as f:                    # one byte of a JPEG, same size
        f.seek(damaged.read_bytes().index(b"\xff\xd8\xff") + 2000)
        f.write(b"\x00")
    before = _files(tmp_path / "out")
    result = _convert(tmp_path)
    assert (result.shards_kept, result.shards_done, result.shards_damaged) == (2, 1, 1)
    after = _files(tmp_path / "out")
    assert {n for n in after if after[n] != before[n]} == _shard_names(tmp_path / "out", 1)
    assert [r.status for r in result.rows] == ["ok"] * 6


def test_a_rerun_retries_a_video_that_was_missing_and_leaves_the_other_shards(tmp_path):
    _source(tmp_path, skip=(1,))
    bad_videos.random_bytes(tmp_path / "videos" / "run" / "v4_000000_000010.mp4")   # stays broken
    first = _convert(tmp_path)
    assert (_video(first, 1).reason, _video(first, 4).reason_kind) == ("missing file", "cannot open")
    assert _video(first, 1).shard != _video(first, 4).shard
    before = _files(tmp_path / "out")

    bad_videos.good(tmp_path / "videos" / "walk" / "v1_000000_000010.mp4", seed=1)
    second = _convert(tmp_path)
    assert _video(second, 1).ok and _video(second, 4).reason_kind == "cannot open"
    assert (second.retried, second.retried_ok, second.shards_done, second.shards_kept) == (1, 1, 1, 2)
    assert "retried 1 video(s) whose source changed, 1 now ok" in summary_lines(second)
    after = _files(tmp_path / "out")
    changed = {n for n in after if after[n] != before[n]}
    assert changed == _shard_names(tmp_path / "out", _video(first, 1).shard)

    third = _convert(tmp_path)                   # nothing changed: the broken video is not retried
    assert (third.retried, third.shards_done, third.shards_kept) == (0, 0, 3)


def test_a_second_converter_is_refused_while_the_lock_is_held(tmp_path, capsys):
    _source(tmp_path, count=2)
    out = tmp_path / "out"
    with output_lock(out):
        assert run_cli(convert_cli.build_parser(), convert_cli.main, _argv(tmp_path, out)) == 1
        assert (out / LOCK_NAME).is_file()
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {re.escape(str(out))} is being converted by pid {os.getpid()} on host "
                        rf"{re.escape(socket.gethostname())} since \S+: wait for it to finish, or "
                        rf"remove {re.escape(str(out / LOCK_NAME))} if that process is gone\n", err), err
    assert list(out.iterdir()) == []


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, caplog):
    _source(tmp_path, count=2)
    out = tmp_path / "out"
    holder = subprocess.run([sys.executable, "-c", "import os, sys; from datatools.lock import output_lock\n"
                             "with output_lock(sys.argv[1]): print(os.getpid()); os._exit(0)", str(out)],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert (out / LOCK_NAME).is_file()                   # left behind by a process that is gone
    result = _convert(tmp_path)
    assert [r.status for r in result.rows] == ["ok"] * 2
    assert f"taking over the stale lock {out / LOCK_NAME} of pid {holder.stdout.strip()} on " \
           f"{socket.gethostname()}" in caplog.text
    assert not (out / LOCK_NAME).exists()


def _mount_tmpfs(folder: Path, size: str) -> str:
    """Mount a tmpfs of ``size`` on ``folder``; mount's complaint if that is not allowed here."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    return mounted.stderr.strip() if mounted.returncode else ""


@pytest.fixture
def small_disk(tmp_path):
    """A 13 MiB tmpfs (a real ENOSPC; MindRecord refuses to write below 10 MiB free): a few small
    shards fit, not all. Skipped where mounting is not allowed (the RLIMIT_FSIZE test runs instead)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    refused = _mount_tmpfs(disk, "13m")
    if refused:
        pytest.skip(f"cannot mount a tmpfs here: {refused}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def _open_files(folder: Path) -> list[str]:
    """Files under ``folder`` this process holds open (a removed one still takes its space)."""
    targets = (os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.exists())
    return [t for t in targets if t.startswith(str(folder))]


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, small_disk, capsys):
    _source(tmp_path, count=16, distinct=2, num_frames=24, width=320, height=240)
    out = small_disk / "out"
    assert run_cli(convert_cli.build_parser(), convert_cli.main, _argv(tmp_path, out)) == 1
    err = capsys.readouterr().err
    stopped = re.fullmatch(rf"error: no space left on device writing (\S+){re.escape(NO_SPACE_TAIL)}\n", err)
    assert stopped, err
    done = [i for i in range(8) if ShardFiles.of(out, i).done.is_file()]
    assert Path(stopped[1]) in [ShardFiles.of(out, i).record for i in range(8) if i not in done]
    assert done and {p.name for p in out.iterdir()} == _shard_names(out, *done)   # nothing partial
    assert _open_files(out) == []
    subprocess.run(["mount", "-o", "remount,size=24m", str(small_disk)], check=True)
    result = _convert(tmp_path, out)
    assert [r.status for r in result.rows] == ["ok"] * 16 and result.shards_kept == len(done)


def _limit_file_size() -> None:
    """In the child: files stop growing at 64 KiB (EFBIG) instead of the process being killed."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))


def test_a_file_size_limit_is_one_line_without_partial_files(tmp_path):
    """The fallback of the full-disk test where no tmpfs can be mounted: writes fail with EFBIG."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _mount_tmpfs(probe, "1m"):
        subprocess.run(["umount", str(probe)], check=True)
        pytest.skip("a tmpfs can be mounted here: the full-disk test covers this with a real ENOSPC")
    _source(tmp_path, count=2, num_frames=24, width=320, height=240)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "datatools.convert", *_argv(tmp_path, out)],
                          capture_output=True, text=True, preexec_fn=_limit_file_size,
                          cwd=Path(__file__).parents[2], timeout=300)
    assert proc.returncode == 1
    record = re.escape(str(ShardFiles.of(out, 0).record))
    assert re.fullmatch(rf"error: file too large for this process or filesystem writing {record}: raise "
                        r"the file size limit \(ulimit -f\) or use another --out; the run resumes where "
                        r"it stopped\n", proc.stderr), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []
    assert [r.status for r in _convert(tmp_path).rows] == ["ok"] * 2
