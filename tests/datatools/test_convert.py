"""datatools.convert end to end on real files: bad inputs, read-back with MindDataset, CLI errors."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections import Counter

import mindspore.dataset as ds
import numpy as np
import pytest
import simplejpeg

from datatools import schema
from datatools.cli import run_cli
from datatools.convert import build_parser, convert, main, summary_lines
from datatools.manifest import (JPEG, LOCK_NAME, STATUS_FAILED, STATUS_OK, FileDigest, Settings, ShardFiles,
                                ok_shard_paths, read_digests, read_manifest, read_rows, read_settings,
                                reason_kind, shard_index)
from tests.datatools import bad_videos

SETTINGS = Settings(codec=JPEG, short_side=32, quality=85, max_fps=None, videos_per_shard=3, seed=0)


def read_split(split_dir) -> list[dict]:
    """Every sample of a split through MindDataset, as the trainer reads it."""
    files = ok_shard_paths(split_dir)
    dataset = ds.MindDataset(files, columns_list=schema.RECORD_COLUMNS, shuffle=False)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """A split holding every bad input the issue names next to good videos, converted once."""
    base = tmp_path_factory.mktemp("bad_run")
    videos = base / "videos"
    rows = [("walk", "good1", bad_videos.good), ("walk", "good2", bad_videos.good),
            ("run", "good3", bad_videos.good), ("run", "missing", None),
            ("run", "zero", bad_videos.zero_bytes), ("walk", "random", bad_videos.random_bytes),
            ("walk", "trunc", lambda p: bad_videos.truncated(p, faststart=True)),
            ("run", "truncmoov", lambda p: bad_videos.truncated(p, faststart=False)),
            ("run", "audio", bad_videos.audio_only), ("walk", "noframes", bad_videos.no_frames),
            ("swim", "unknown", bad_videos.good), ("walk", "good1", bad_videos.good)]
    lines = ["label,youtube_id,time_start,time_end,split"]
    for label, ytid, make in rows:
        if make is not None:
            make(videos / label / f"{ytid}_000000_000010.mp4")
        lines.append(f"{label},{ytid},0,10,train")
    (base / "train.csv").write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("run 0\nwalk 1\n")
    result = convert(base / "train.csv", videos, base / "labels.txt", base / "out", SETTINGS)
    return base, result


def test_every_bad_input_is_a_failed_row_with_a_reason(bad_run):
    base, result = bad_run
    rows = read_rows(base / "out")
    assert len(rows) == 12 and [r.video_id.split("_")[0] for r in rows][:3] == ["good1", "good2", "good3"]
    reasons = {r.video_id.split("_")[0] + ("#2" if i == 11 else ""): r.reason
               for i, r in enumerate(rows) if not r.ok}
    assert reasons["missing"] == (f"missing file: tried {base}/videos/run/missing_000000_000010.{{mp4,mkv,webm}}, "
                                  f"{base}/videos/missing_000000_000010.{{mp4,mkv,webm}}")
    assert reasons["zero"] == "empty file: 0 bytes"
    assert reasons["random"].startswith("cannot open: ")
    # Which check fires depends on the decoder's threads: a threaded decoder drops the cut frame
    # (a short count), one thread reports its error.
    assert reasons["trunc"].startswith(("truncated: decoded ", "truncated: decode error after "))
    assert reasons["truncmoov"] in ("no video stream", "cannot open: Invalid data found when processing input")
    assert reasons["audio"] == "no video stream"
    assert reasons["noframes"].startswith("no frames decoded")
    assert reasons["unknown"] == "unknown label: 'swim' is not in the label file"
    assert reasons["good1#2"] == "duplicate video_id: first at CSV line 2"
    assert len(reasons) == 9 and all("\n" not in r for r in reasons.values())
    assert {r.shard for r in rows if r.reason.startswith(("unknown", "duplicate"))} == {-1}
    kinds = Counter(["missing file", "empty file", "cannot open", "truncated", "no video stream",
                     "no frames decoded", "unknown label", "duplicate video_id",
                     reason_kind(reasons["truncmoov"])])
    assert _table(summary_lines(result)) == {("ok", ""): 3, **{("failed", k): n for k, n in kinds.items()}}


def _table(lines: list[str]) -> dict[tuple[str, str], int]:
    """The summary's status/reason/videos table as {(status, reason kind): videos}."""
    rows = [re.fullmatch(r"(ok|failed)\s+(.*?)\s*(\d+)", line) for line in lines]
    return {(m[1], m[2]): int(m[3]) for m in rows if m}


def test_ok_rows_are_read_back_by_minddataset(bad_run):
    base, _ = bad_run
    ok = [r for r in read_rows(base / "out") if r.ok]
    samples = read_split(base / "out")
    assert Counter(str(s[schema.VIDEO_ID]) for s in samples) == Counter(r.video_id for r in ok)
    by_id = {r.video_id: r for r in ok}
    for s in samples:
        row = by_id[str(s[schema.VIDEO_ID])]
        blob, offsets = s[schema.FRAMES].tobytes(), s[schema.OFFSETS]
        assert int(s[schema.NUM_FRAMES]) == row.num_frames == len(offsets) - 1 == 12
        assert len(blob) == offsets[-1] == row.bytes
        assert int(s[schema.LABEL]) == row.label
        # 64x48 source, short side 32: stored 43x32; every frame decodes to it.
        assert (int(s[schema.WIDTH]), int(s[schema.HEIGHT])) == (row.width, row.height) == (43, 32)
        for i in range(row.num_frames):
            frame = simplejpeg.decode_jpeg(bytes(schema.frame_bytes(blob, offsets, i)))
            assert frame.shape == (32, 43, 3) and frame.dtype == np.uint8


def test_manifest_metadata_holds_version_settings_and_shard_digests(bad_run):
    base, _ = bad_run
    table = read_manifest(base / "out")
    assert read_settings(table) == SETTINGS
    shards = [ShardFiles.of(base / "out", shard_index(p)) for p in ok_shard_paths(base / "out")]
    assert shards and read_digests(table) == {p.name: FileDigest.of(p)
                                              for f in shards for p in (f.record, f.db)}


def test_rerun_with_other_settings_is_refused(bad_run):
    base, _ = bad_run
    other = Settings(codec=JPEG, short_side=32, quality=70, max_fps=None, videos_per_shard=3, seed=0)
    with pytest.raises(ValueError, match="other settings: --quality 85 → 70; convert with the split's"):
        convert(base / "train.csv", base / "videos", base / "labels.txt", base / "out", other)
    assert not (base / "out" / LOCK_NAME).exists()


def _cli(capsys, *args) -> tuple[int, str]:
    """``python -m datatools.convert`` in this process: its exit code and stderr."""
    code, _, err = _cli_out(capsys, *args)
    return code, err


def _cli_out(capsys, *args) -> tuple[int, str, str]:
    """``python -m datatools.convert`` in this process: its exit code, stdout and stderr."""
    code = run_cli(build_parser(), main, list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bad_arguments_fail_with_one_line_before_touching_disk(bad_run, tmp_path, capsys):
    base, _ = bad_run
    common = ["--csv", base / "train.csv", "--videos", base / "videos", "--labels", base / "labels.txt",
              "--out", tmp_path / "out"]
    assert _cli(capsys, *common, "--codec", "jpeg", "--quality", "0") == (2, "error: --quality must be in 1..100, got 0\n")
    code, err = _cli(capsys, *common, "--backend", "nope")
    assert code == 2 and err.startswith("error: --backend must be one of [") and err.count("\n") == 1, err
    assert _cli(capsys, "--csv", tmp_path / "none.csv", *common[2:]) == (
        2, f"error: CSV not found: {tmp_path / 'none.csv'}\n")
    assert not (tmp_path / "out").exists()


def test_shards_of_different_sized_videos_read_as_one_split(tmp_path):
    """MindDataset refuses shards whose page/header sizes differ: they must not depend on the data."""
    videos, lines = tmp_path / "videos", ["label,youtube_id,time_start,time_end,split"]
    for i, (frames, side) in enumerate([(4, 32), (4, 32), (60, 160), (60, 160), (8, 64)]):
        bad_videos.good(videos / "walk" / f"v{i}_000000_000010.mp4", num_frames=frames,
                        width=side * 4 // 3 // 2 * 2, height=side, seed=i)
        lines.append(f"walk,v{i},0,10,train")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    settings = Settings(codec=JPEG, short_side=0, quality=90, max_fps=None, videos_per_shard=2, seed=0,
                        page_size=1 << 20)
    result = convert(tmp_path / "train.csv", videos, tmp_path / "labels.txt", tmp_path / "out", settings)
    assert [r.status for r in result.rows] == [STATUS_OK] * 5
    assert len(ok_shard_paths(tmp_path / "out")) == 3
    assert sorted(s[schema.VIDEO_ID].item() for s in read_split(tmp_path / "out")) == \
        sorted(r.video_id for r in result.rows)


@pytest.mark.parametrize("chroma", ["420", "444"])
def test_chroma_setting_reaches_the_stored_jpegs(tmp_path, chroma):
    bad_videos.good(tmp_path / "videos" / "walk" / "v_000000_000010.mp4", num_frames=3)
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nwalk,v,0,10,train\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    settings = Settings(codec=JPEG, short_side=0, quality=90, max_fps=None, videos_per_shard=2, seed=0,
                        chroma_subsampling=chroma, page_size=1 << 20)
    convert(tmp_path / "train.csv", tmp_path / "videos", tmp_path / "labels.txt", tmp_path / "out", settings)
    (sample,) = read_split(tmp_path / "out")
    blob, offsets = sample[schema.FRAMES].tobytes(), sample[schema.OFFSETS]
    headers = {simplejpeg.decode_jpeg_header(bytes(schema.frame_bytes(blob, offsets, i)))[3]
               for i in range(len(offsets) - 1)}
    assert headers == {chroma}
    assert read_settings(read_manifest(tmp_path / "out")).chroma_subsampling == chroma


def test_a_video_larger_than_a_page_is_a_failed_row(tmp_path):
    videos = tmp_path / "videos"
    bad_videos.good(videos / "walk" / "small_000000_000010.mp4", num_frames=2)
    bad_videos.good(videos / "walk" / "big_000000_000010.mp4", num_frames=40, width=320, height=240)
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                        "walk,small,0,10,train\nwalk,big,0,10,train\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    settings = Settings(codec=JPEG, short_side=0, quality=95, max_fps=None, videos_per_shard=2, seed=0,
                        page_size=1 << 16)
    result = convert(tmp_path / "train.csv", videos, tmp_path / "labels.txt", tmp_path / "out", settings)
    status = {r.video_id.split("_")[0]: (r.status, r.reason) for r in result.rows}
    assert status["small"] == (STATUS_OK, "")
    assert status["big"][0] == STATUS_FAILED and "larger --page-mb" in status["big"][1]
    assert [s[schema.VIDEO_ID].item() for s in read_split(tmp_path / "out")] == ["small_000000_000010"]


def test_cli_rejects_a_page_size_out_of_range(tmp_path):
    """The one run of ``python -m datatools.convert`` as its own process here: the exit code and
    the single stderr line a user sees."""
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    result = subprocess.run([sys.executable, "-m", "datatools.convert", "--csv", str(tmp_path / "train.csv"),
                             "--videos", str(tmp_path), "--labels", str(tmp_path / "labels.txt"),
                             "--out", str(tmp_path / "out"), "--page-mb", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --page-mb must be auto or from 0.03125 to 256 in multiples of 4 bytes, got 300"], result.stderr
    assert not (tmp_path / "out").exists()


def _two_videos(base) -> tuple:
    videos = base / "videos"
    for name in ("a", "b"):
        bad_videos.good(videos / "walk" / f"{name}_000000_000010.mp4", num_frames=3)
    (base / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "walk,a,0,10,train\nwalk,b,0,10,train\n")
    (base / "labels.txt").write_text("walk 0\n")
    return base / "train.csv", videos, base / "labels.txt", base / "out"


def _failing_resize(monkeypatch, error: BaseException, times: int) -> None:
    """cv2.resize raising ``error`` on its first ``times`` calls, as a video cv2 cannot take makes it."""
    import cv2
    resize, calls = cv2.resize, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise error
        return resize(*args, **kwargs)
    monkeypatch.setattr(cv2, "resize", failing)


def test_a_video_that_makes_cv2_raise_is_a_failed_row_and_the_run_goes_on(tmp_path, monkeypatch):
    import cv2
    _failing_resize(monkeypatch, cv2.error("OpenCV(4.10) resize.cpp:4152: error: (-215:Assertion "
                                           "failed)\n  !ssize.empty() in function 'resize'\n"), times=1)
    result = convert(*_two_videos(tmp_path), SETTINGS, backend="threading")
    assert sorted(r.reason for r in result.rows) == [
        "", "encode error: cv2.error: OpenCV(4.10) resize.cpp:4152: error: (-215:Assertion failed) "
            "!ssize.empty() in function 'resize'"]
    assert len(read_split(tmp_path / "out")) == 1


def test_a_probe_video_that_runs_out_of_memory_does_not_stop_the_auto_page(tmp_path, monkeypatch):
    _failing_resize(monkeypatch, MemoryError("cannot allocate 1 GB"), times=10**6)
    auto = Settings(codec=JPEG, short_side=32, quality=85, max_fps=None, videos_per_shard=3, seed=0,
                    page_size=-1)
    result = convert(*_two_videos(tmp_path), auto, backend="threading")
    assert [r.reason for r in result.rows] == ["encode error: MemoryError: cannot allocate 1 GB"] * 2


JPEG_FLAGS = ["--codec", "jpeg", "--short-side", "32", "--page-mb", "1", "--backend", "threading"]


def _split_of_two(base):
    """train.csv (a, b) and val.csv (c) over three videos, labels.txt beside the split folder
    records/train (where the trainer and datatools.inspect find it)."""
    csv, videos, labels, _ = _two_videos(base)
    bad_videos.good(videos / "walk" / "c_000000_000010.mp4", num_frames=3)
    (base / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nwalk,c,0,10,val\n")
    (base / "records").mkdir()
    return ["--videos", videos, "--labels", labels.replace(base / "records" / "labels.txt"),
            "--out", base / "records" / "train", *JPEG_FLAGS]


def _ids(split) -> list[str]:
    return [r.video_id.split("_")[0] for r in read_rows(split)]


def test_another_input_into_a_split_is_refused_naming_both_unless_replace(tmp_path, capsys):
    common = _split_of_two(tmp_path)
    split = tmp_path / "records" / "train"
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    assert _cli(capsys, "--csv", train, *common)[0] == 0
    code, err = _cli(capsys, "--csv", val, *common)
    assert (code, err) == (2, f"error: {split} holds a split converted from {train}, not from {val} "
                              f"(other videos or labels): convert into another --out, or add --replace "
                              f"to replace that split\n")
    assert _ids(split) == ["a", "b"]
    ShardFiles.of(split, 0).done.rename(split / "kept.json")      # half done: no manifest, a marker
    (split / "manifest.parquet").unlink()
    (split / "kept.json").rename(ShardFiles.of(split, 0).done)
    assert _cli(capsys, "--csv", val, *common)[1].startswith(f"error: {split} holds a split converted from {train}")
    assert _cli(capsys, "--csv", val, *common, "--replace")[0] == 0
    assert _ids(split) == ["c"] and sorted(p.name for p in split.glob("shard-*")) == [
        "shard-00000.done.json", "shard-00000.mindrecord", "shard-00000.mindrecord.db"]


def test_a_split_stored_before_its_input_was_resumes_and_stores_it(tmp_path, capsys):
    import json

    import pyarrow.parquet as pq
    common = _split_of_two(tmp_path)
    split = tmp_path / "records" / "train"
    assert _cli(capsys, "--csv", tmp_path / "train.csv", *common)[0] == 0
    table = read_manifest(split)         # as an older converter wrote it: no input_sha256
    meta = json.loads(table.schema.metadata[b"stnet_records.settings"])
    sha = meta.pop("input_sha256")
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata,
                                                  b"stnet_records.settings": json.dumps(meta).encode()}),
                   split / "manifest.parquet")
    code, out, _ = _cli_out(capsys, "--csv", tmp_path / "train.csv", *common)
    assert code == 0 and "shards: 0 converted, 1 kept" in out
    assert json.loads(read_manifest(split).schema.metadata[b"stnet_records.settings"])["input_sha256"] == sha


def test_a_run_where_no_video_converts_fails_and_names_every_video_and_path_tried(tmp_path, capsys):
    from datatools import inspect
    common = _split_of_two(tmp_path)
    deep = tmp_path / "videos" / "walk" / "clips"     # --videos one folder too deep
    deep.mkdir()
    common[1] = deep
    code, out, err = _cli_out(capsys, "--csv", tmp_path / "train.csv", *common)
    assert code == 1 and err == (f"error: no video of {tmp_path / 'train.csv'} converted (reasons above): "
                                 f"check --videos {deep} and the paths tried\n")
    tried = {v: f"missing file: tried {deep}/walk/{v}_000000_000010.{{mp4,mkv,webm}}, "
                f"{deep}/{v}_000000_000010.{{mp4,mkv,webm}}" for v in "ab"}
    assert [r.reason for r in read_rows(tmp_path / "records" / "train")] == [tried["a"], tried["b"]]
    named = ["failed videos:", *(f"  {v}_000000_000010: {tried[v]}" for v in "ab")]
    assert out.splitlines()[-3:] == named
    assert run_cli(inspect.build_parser(), inspect.main,
                   [str(tmp_path / "records" / "train"), "--failed", "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == named


def test_inspect_refuses_a_label_file_other_than_the_splits(tmp_path, capsys):
    from datatools import inspect
    common = _split_of_two(tmp_path)
    assert _cli(capsys, "--csv", tmp_path / "train.csv", *common)[0] == 0
    labels = tmp_path / "records" / "labels.txt"
    stored = FileDigest.of(labels).sha256
    labels.write_text("run 0\nwalk 1\n")          # another label file: walk is class 1 now
    capsys.readouterr()
    split = str(tmp_path / "records" / "train")
    assert run_cli(inspect.build_parser(), inspect.main, [split, "--workers", "1"]) == 1
    printed = capsys.readouterr().out.splitlines()
    bad = [line for line in printed if line.startswith("BAD")]
    assert printed[-1] == "FAILED: 1 problem(s) with the label file"     # not "in 0 shard(s)"
    # The trainer's own check (schema.split_labels_problem), word for word.
    assert bad == [f"BAD {split} was converted with another label file than {labels} (sha256 "
                   f"{stored[:12]}… vs {FileDigest.of(labels).sha256[:12]}…): its labels would mean "
                   f"other classes; reconvert it with --labels {labels}, or use the label file it was "
                   f"converted with"]


def test_a_refused_resume_names_each_changed_setting_by_its_flag():
    stored = Settings(short_side=256, quality=90, max_fps=None, videos_per_shard=64, seed=0,
                      page_size=1 << 20)
    given = dataclasses.replace(stored, page_size=2 << 20, crf=20, fastdecode=False, max_fps=12.5)
    assert stored.changes_to(given) == ["--max-fps None → 12.5", "--page-mb 1 → 2", "--crf 18 → 20",
                                        "--fastdecode on → off"]
    assert stored.changes_to(stored) == []


def test_a_split_of_mostly_holes_is_warned_about_with_the_page_that_fits(tmp_path, capsys):
    """Two small videos in the auto range's 32 MiB pages: the shard file is ~1,000x what it
    allocates (a bucket stores all of it); the summary says so and names the page that fits.
    With that page, no warning."""
    csv, videos, labels, out = _two_videos(tmp_path)
    common = ["--csv", csv, "--videos", videos, "--labels", labels, "--short-side", "32", "--backend", "threading"]
    code, printed, _ = _cli_out(capsys, *common, "--out", out)
    assert code == 0
    holes = [line for line in printed.splitlines() if line.startswith("holes: ")]
    assert len(holes) == 1 and "(32 MiB pages for videos of " in holes[0] \
        and holes[0].endswith("--page-mb 1 fits these videos (reconvert with it and --replace)"), printed
    code, printed, _ = _cli_out(capsys, *common, "--out", tmp_path / "fitting", "--page-mb", "1")
    assert code == 0 and "holes: " not in printed
