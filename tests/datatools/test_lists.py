"""Video lists (plain, path,label CSV, UCF101, HMDB51) through datatools.convert, the manifest,
MindDataset and the trainer's loader; every bad line is a failed row with its reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from datatools import labels, schema
from datatools.cli import run_cli
from datatools.convert import build_parser, convert, main
from datatools.lists import ListEntry, read_entries, read_list
from datatools.manifest import NO_SHARD, STATUS_OK, read_rows
from tests.datatools import bad_videos
from tests.datatools.test_convert import SETTINGS, read_split
from trainer.config import load_config
from trainer.data import MASK, create_dataset

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
GOOD = ["walk/a.mp4 walk", "walk/b.mp4 walk", "run/c d.mp4 run", "jump/e.mp4 jump"]


def _videos(root: Path, relpaths: list[str]) -> Path:
    for i, relpath in enumerate(relpaths):
        bad_videos.good(root / relpath, num_frames=6, seed=i)
    return root


def _labels(base: Path, spec: str) -> Path:
    out = base / "records" / schema.LABELS_NAME
    assert run_cli(labels.build_parser(), labels.main, ["--list", spec, str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Four videos (one path with a space) in a plain list, labels from the list, converted."""
    base = tmp_path_factory.mktemp("plain")
    videos = _videos(base / "videos", [line.rsplit(" ", 1)[0] for line in GOOD])
    (base / "val.txt").write_text("\n".join(GOOD) + "\n")
    label_file = _labels(base, str(base / "val.txt"))
    result = convert(None, videos, label_file, base / "records" / "val", SETTINGS,
                     video_list=str(base / "val.txt"))
    return base, result


def test_a_plain_list_converts_and_reads_back(plain):
    base, result = plain
    assert (base / "records" / schema.LABELS_NAME).read_text() == "jump 0\nrun 1\nwalk 2\n"
    rows = read_rows(base / "records" / "val")
    assert [(r.video_id, r.label_name, r.label, r.status) for r in rows] == [
        ("walk/a", "walk", 2, STATUS_OK), ("walk/b", "walk", 2, STATUS_OK),
        ("run/c d", "run", 1, STATUS_OK), ("jump/e", "jump", 0, STATUS_OK)]
    assert rows[2].source == str(base / "videos" / "run" / "c d.mp4")
    samples = read_split(base / "records" / "val")
    assert sorted((str(s[schema.VIDEO_ID]), int(s[schema.LABEL])) for s in samples) == \
        sorted((r.video_id, r.label) for r in rows)


def test_a_converted_list_resumes(plain):
    base, first = plain
    again = convert(None, base / "videos", base / "records" / schema.LABELS_NAME, base / "records" / "val",
                    SETTINGS, video_list=str(base / "val.txt"))
    assert (again.shards_kept, again.shards_done) == (first.shards_done, 0)
    assert again.rows == first.rows


def test_the_trainer_reads_a_converted_list(plain):
    base, _ = plain
    cfg = load_config(DEMO, [f"data.root={base / 'records'}", "model.num_classes=3", "test.crop=32",
                             "data.crop_size=32", "data.num_workers=1"])
    batches = create_dataset(cfg, "val", training=False).create_dict_iterator(num_epochs=1, output_numpy=True)
    read = [(str(v), int(label)) for b in batches
            for v, label, mask in zip(b[schema.VIDEO_ID], b[schema.LABEL], b[MASK]) if mask]
    names = schema.read_labels(base / "records" / schema.LABELS_NAME)
    listed = [(path.rsplit(".", 1)[0], names.index(label)) for path, label in
              (line.rsplit(" ", 1) for line in GOOD)]
    assert sorted(read) == sorted(listed)          # each video once, with the list's label


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """One good line, then one line per bad input, converted once; rows by line."""
    base = tmp_path_factory.mktemp("bad")
    videos = _videos(base / "videos", ["walk/a.mp4", "walk/b.mp4"])
    _videos(base, ["outside.mp4"])
    lines = ["walk/a.mp4 walk", "walk/b.mp4", "walk/b.mp4 swim", "../outside.mp4 walk",
             f"{base / 'outside.mp4'} walk", "walk/a.mp4 walk", "walk/./a.mkv walk"]
    (base / "train.txt").write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("walk 0\n")
    result = convert(None, videos, base / "labels.txt", base / "out", SETTINGS,
                     video_list=str(base / "train.txt"))
    return base, result.rows


@pytest.mark.parametrize("line, reason", [
    (2, "no label: train.txt line 2"),
    (3, "unknown label: 'swim' is not in the label file"),
    (4, "outside --videos: '../outside.mp4' at train.txt line 4"),
    (6, "duplicate video_id: first at train.txt line 1"),
    (7, "duplicate video_id: first at train.txt line 1"),     # same path but for the extension
])
def test_a_bad_line_is_a_failed_row_with_its_reason(bad, line, reason):
    _, rows = bad
    assert (rows[line - 1].reason, rows[line - 1].shard) == (reason, NO_SHARD)


def test_an_absolute_path_is_outside_the_videos(bad):
    base, rows = bad
    assert rows[4].reason == f"outside --videos: '{base / 'outside.mp4'}' at train.txt line 5"
    assert [r.status for r in rows].count(STATUS_OK) == 1 and rows[0].ok
    assert [str(s[schema.VIDEO_ID]) for s in read_split(base / "out")] == ["walk/a"]


def test_ucf101_split_files_convert_with_the_class_index_and_folders(tmp_path):
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "Archery/v_Archery_g08_c01.avi 2"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Archery/v_Archery_g01_c01.avi"]
    videos = _videos(tmp_path / "UCF-101", [line.split()[0] for line in train + test])
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (tmp_path / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")    # as shipped: CRLF
    (tmp_path / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    label_file = _labels(tmp_path, f"ucf101:{tmp_path / 'trainlist01.txt'}")
    assert schema.read_labels(label_file) == ["ApplyEyeMakeup", "Archery"]
    for split, name, lines in (("train", "trainlist01.txt", train), ("val", "testlist01.txt", test)):
        spec = f"ucf101:{tmp_path / name}"
        result = convert(None, videos, label_file, tmp_path / "records" / split, SETTINGS, video_list=spec)
        assert [(r.video_id, r.label, r.ok) for r in result.rows] == [
            (line.split()[0][:-len(".avi")], i, True) for i, line in enumerate(lines)]
        assert sorted(int(s[schema.LABEL]) for s in read_split(tmp_path / "records" / split)) == [0, 1]


def test_hmdb51_split_files_pick_train_or_test(tmp_path):
    (tmp_path / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (tmp_path / "cartwheel_test_split1.txt").write_text("d.avi 2\ne.avi 1\n")
    (tmp_path / "cartwheel_test_split2.txt").write_text("e.avi 2\n")
    assert read_list(f"hmdb51:{tmp_path}:1") == [
        ListEntry("brush_hair_test_split1.txt line 1", "brush_hair/a.avi", "brush_hair"),
        ListEntry("cartwheel_test_split1.txt line 2", "cartwheel/e.avi", "cartwheel")]
    test = read_list(f"hmdb51:{tmp_path}:1:test")
    assert [e.relpath for e in test] == ["brush_hair/b.avi", "cartwheel/d.avi"]
    with pytest.raises(ValueError, match="expected hmdb51:DIR:N or hmdb51:DIR:N:test"):
        read_list(f"hmdb51:{tmp_path}:1:val")
    with pytest.raises(FileNotFoundError, match=r"no HMDB51 split files \*_test_split3.txt"):
        read_list(f"hmdb51:{tmp_path}:3")


def test_a_csv_list_with_a_path_label_header(tmp_path):
    (tmp_path / "l.csv").write_text('path,label\nwalk/a b.mp4,walk\n"x/y,z.mp4",run\nc.mp4\n')
    assert [(e.relpath, e.label, e.video_id) for e in read_list(str(tmp_path / "l.csv"))] == [
        ("walk/a b.mp4", "walk", "walk/a b"), ("x/y,z.mp4", "run", "x/y,z"), ("c.mp4", "", "c")]


def test_a_list_without_one_labelled_line_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "l.txt").write_text("walk/a.mp4\nwalk/my clip.mp4\n")
    (tmp_path / "labels.txt").write_text("walk 0\n")
    argv = ["--list", str(tmp_path / "l.txt"), "--videos", str(tmp_path),
            "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "o")]
    assert run_cli(build_parser(), main, argv) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'l.txt'}: no labelled video in the list; expected FILE ('relative/path "
        "label' lines or a 'path,label' CSV), ucf101:FILE or hmdb51:DIR:N[:test]\n")
    assert not (tmp_path / "o").exists()


def test_convert_takes_exactly_one_of_csv_and_list(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--csv", "a.csv", "--list", "l.txt", "--videos", "v", "--labels", "l",
                                   "--out", "o"])
    assert exit_info.value.code == 2
    for csv_path, video_list in ((None, None), (tmp_path / "a.csv", str(tmp_path / "l.txt"))):
        with pytest.raises(ValueError, match="exactly one of --csv"):
            read_entries(csv_path, video_list)
