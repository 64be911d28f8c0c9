"""What a re-run over an existing output must refuse, verify, redo or retry, and the failures
that must stop it in one line: another label file, damaged kept shards, videos that can now be
converted, a shard that does not read back as written, a second converter, a full disk, a file
size limit."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from mindspore.mindrecord import FileWriter

from datatools import convert as convert_cli
from datatools.cli import run_cli
from datatools.convert import convert, summary_lines
from datatools.lock import output_lock
from datatools.manifest import JPEG, LOCK_NAME, MANIFEST_NAME, Settings, ShardFiles
from tests.datatools import bad_videos

SETTINGS = Settings(codec=JPEG, short_side=0, quality=80, max_fps=None, videos_per_shard=2, seed=0, page_size=1 << 20)
LABELS = ("run", "walk")
REPO = Path(__file__).resolve().parents[2]
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
            str(base / "labels.txt"), "--out", str(out), "--short-side", "0", "--codec", "jpeg",
            "--quality", "80", "--videos-per-shard", "2", "--page-mb", "1"]


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
    assert (_video(first, 1).reason_kind, _video(first, 4).reason_kind) == ("missing file", "cannot open")
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


def _flip_a_jpeg_byte(record: Path) -> None:
    """Flip a byte inside the first stored JPEG (between its SOI and EOI markers), in place."""
    data = record.read_bytes()
    start = data.index(b"\xff\xd8\xff")
    at = (start + data.index(b"\xff\xd9", start)) // 2
    with open(record, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x10]))


def test_a_shard_whose_read_back_differs_is_not_marked_done(tmp_path, monkeypatch):
    """Shard 1's file altered on disk right after MindRecord commits it (as a bad disk would):
    the read-back's checksum catches it, the shard is not marked done and its files go; shard 0,
    done before it, stays, and the next run converts the rest."""
    _source(tmp_path)
    out, commit, commits = tmp_path / "out", FileWriter.commit, itertools.count(1)

    def commit_then_alter(writer: FileWriter) -> None:
        commit(writer)
        if next(commits) == 2:           # one worker: the shards in plan order
            _flip_a_jpeg_byte(ShardFiles.of(out, 1).record)

    monkeypatch.setattr(FileWriter, "commit", commit_then_alter)
    with pytest.raises(OSError) as caught:
        _convert(tmp_path)
    record = re.escape(str(ShardFiles.of(out, 1).record))
    assert re.fullmatch(rf"{record}: verification failed: wrote 2 videos, read back 2 \(missing e\.g\. "
                        r"\[\]; 1 damaged, e\.g\. \['v\d_000000_000010: checksum mismatch'\]\)",
                        str(caught.value)), caught.value
    assert {p.name for p in out.iterdir()} == _shard_names(out, 0)
    monkeypatch.undo()
    result = _convert(tmp_path)
    assert (result.shards_kept, result.shards_done) == (1, 2)
    assert [r.status for r in result.rows] == ["ok"] * 6


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
                            capture_output=True, text=True, check=True, cwd=REPO)
    assert (out / LOCK_NAME).is_file()                   # left behind by a process that is gone
    result = _convert(tmp_path)
    assert [r.status for r in result.rows] == ["ok"] * 2
    assert f"taking over the stale lock {out / LOCK_NAME} of pid {holder.stdout.strip()} on " \
           f"{socket.gethostname()}" in caplog.text
    assert not (out / LOCK_NAME).exists()


def _open_files(folder: Path) -> list[str]:
    """Files on ``folder``'s filesystem this process holds open (a removed one still takes its
    space)."""
    device, found = folder.stat().st_dev, []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.stat(fd).st_dev == device:
                found.append(os.readlink(fd))
        except OSError:
            continue
    return found


# In user and mount namespaces of its own, an unprivileged process may mount a tmpfs: no root, and
# nothing mounted for the rest of the machine. The converter must run in there too (MindRecord
# resolves its paths: another process's /proc/PID/root/... does not reach that process's mounts).
IN_NAMESPACES = ["unshare", "--user", "--map-root-user", "--mount"]


def _namespaces_refused() -> str:
    """Why this machine gives no user and mount namespaces, or "" where it does."""
    if shutil.which(IN_NAMESPACES[0]) is None:
        return "no unshare command"
    tried = subprocess.run([*IN_NAMESPACES, "true"], capture_output=True, text=True)
    return tried.stderr.strip() or f"exit {tried.returncode}" if tried.returncode else ""


def full_disk_run(base: str) -> None:
    """The full-disk test's run, in a child in namespaces of its own: a 13 MiB tmpfs at
    ``base/disk`` (a real ENOSPC; MindRecord refuses to write below 10 MiB free) that a few small
    shards fit, not all; the CLI onto it; the tmpfs grown to 24 MiB; the same run again. What the
    test checks goes to ``base/disk.json``."""
    base_dir, disk = Path(base), Path(base) / "disk"
    out = disk / "out"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=13m", "tmpfs", str(disk)], check=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli(convert_cli.build_parser(), convert_cli.main, _argv(base_dir, out))
    done = [i for i in range(8) if ShardFiles.of(out, i).done.is_file()]
    facts = {"code": code, "err": err.getvalue(), "done": done,
             "names": sorted(p.name for p in out.iterdir()), "open": _open_files(disk)}
    subprocess.run(["mount", "-o", "remount,size=24m", str(disk)], check=True)
    result = _convert(base_dir, out)
    facts |= {"statuses": [r.status for r in result.rows], "kept": result.shards_kept}
    (base_dir / "disk.json").write_text(json.dumps(facts))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path):
    refused = _namespaces_refused()
    if refused:
        pytest.skip(f"no user and mount namespaces here: {refused}")
    _source(tmp_path, count=16, distinct=2, num_frames=24, width=320, height=240)
    (tmp_path / "disk").mkdir()
    child = subprocess.run([*IN_NAMESPACES, sys.executable, "-c", "import sys; from tests.datatools."
                            "test_integrity import full_disk_run; full_disk_run(sys.argv[1])", str(tmp_path)],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert child.returncode == 0, child.stderr
    facts = json.loads((tmp_path / "disk.json").read_text())
    out = tmp_path / "disk" / "out"
    assert facts["code"] == 1
    stopped = re.fullmatch(rf"error: no space left on device writing (\S+){re.escape(NO_SPACE_TAIL)}\n",
                           facts["err"])
    assert stopped, facts["err"]
    done = facts["done"]
    assert Path(stopped[1]) in [ShardFiles.of(out, i).record for i in range(8) if i not in done]
    assert done and set(facts["names"]) == _shard_names(out, *done)     # nothing partial
    assert facts["open"] == []
    assert facts["statuses"] == ["ok"] * 16 and facts["kept"] == len(done)


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """This process's files stop growing at ``limit`` bytes (EFBIG) instead of the process being
    killed; as it was on leaving (the soft limit goes back under the hard one it never left)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("limit", [
    pytest.param(64 << 10, id="spool"),      # the frames' spool passes it: Python's OSError(EFBIG)
    pytest.param(512 << 10, id="record"),    # the spool fits, the record's 1 MiB page slots do not:
])                                           # MindRecord's writer fails, with no errno
def test_a_file_size_limit_is_one_line_without_partial_files(tmp_path, capsys, limit):
    _source(tmp_path, count=2, num_frames=24, width=320, height=240)
    out = tmp_path / "out"
    with _file_size_limit(limit):
        code = run_cli(convert_cli.build_parser(), convert_cli.main, _argv(tmp_path, out))
    assert code == 1
    record = re.escape(str(ShardFiles.of(out, 0).record))
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: file too large for this process or filesystem writing {record}: raise "
                        r"the file size limit \(ulimit -f\) or use another --out; the run resumes where "
                        r"it stopped\n", err), err
    assert sorted(p.name for p in out.iterdir()) == []
    assert [r.status for r in _convert(tmp_path).rows] == ["ok"] * 2
