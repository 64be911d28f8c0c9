"""Kinetics CSV parsing, the label file format and the video-path variants."""
from __future__ import annotations

import subprocess
import sys

import pytest

from datatools.kinetics import CsvEntry, find_video, read_csv
from datatools.cli import run_cli
from datatools.labels import build_parser, class_names, main, write_labels
from datatools import schema
from datatools.schema import read_labels

# Official K400/K700 layout: quoted labels with commas, an optional is_cc column.
CSV_TEXT = """label,youtube_id,time_start,time_end,split,is_cc
"cooking egg, fried",abc-def_123,12,22,train,0
abseiling,xyz_0000001,0,10,train,1
"cooking egg, fried",qqq-qqq-qqq,30.0,40.0,train,0
zumba,zzz,5,15,train,0
"""


def test_read_csv_handles_quotes_commas_and_extra_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CSV_TEXT)
    entries = read_csv(path)
    assert [e.label for e in entries] == ["cooking egg, fried", "abseiling", "cooking egg, fried", "zumba"]
    assert entries[0] == CsvEntry(2, "cooking egg, fried", "abc-def_123", 12, 22)
    assert entries[2].video_id == "qqq-qqq-qqq_000030_000040"


def test_label_file_is_sorted_name_space_index_and_round_trips(tmp_path):
    csv_path, out = tmp_path / "train.csv", tmp_path / "records" / "labels.txt"
    csv_path.write_text(CSV_TEXT)
    assert run_cli(build_parser(), main, [str(csv_path), str(out)]) == 0
    assert out.read_text() == "abseiling 0\ncooking egg, fried 1\nzumba 2\n"
    assert read_labels(out) == ["abseiling", "cooking egg, fried", "zumba"]


def test_class_names_reject_multiline_names(tmp_path):
    with pytest.raises(ValueError, match="one line"):
        write_labels(class_names(["a", "b\nc"]), tmp_path / "labels.txt")


@pytest.mark.parametrize("text, message", [
    ("a 0\nb 0\n", r"labels\.txt:1,2: class index 0 is given to both 'a' and 'b': each index must name one class$"),
    ("a 0\nb 1\n\na 2\n", r"labels\.txt:1,4: class 'a' is listed twice: each class must have one index$"),
    ("a 0\nb 3\nc 1\n", r"labels\.txt:2: class indices must be 0\.\.2 without gaps, but index 2 is missing "
                         r"\(1 missing; the highest is 3, at this line\)$"),
])
def test_label_file_refuses_repeated_indices_repeated_names_and_gaps(tmp_path, text, message):
    """A repeated index silently dropped a class; each refusal names the file and the lines."""
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels(path)


def test_a_split_is_bound_to_the_label_file_it_was_converted_with(tiny_records, tmp_path):
    """The check datatools.inspect and the trainer share: same names, other indices, refused."""
    assert schema.split_labels_problem(tiny_records.split("val"), tiny_records.labels) is None
    other = write_labels(read_labels(tiny_records.labels)[::-1], tmp_path / "labels.txt")
    problem = schema.split_labels_problem(tiny_records.split("val"), other)
    assert problem.startswith(f"{tiny_records.split('val')} was converted with another label file "
                              f"than {other} (sha256 ")
    assert problem.endswith(f"reconvert it with --labels {other}, or use the label file it was "
                            f"converted with") and "\n" not in problem


@pytest.mark.parametrize("text, message", [
    ("label,youtube_id,time_start,split\nx,y,1,train\n", r"t\.csv:1: missing column\(s\) \['time_end'\]"),
    ("label,youtube_id,time_start,time_end,split\nx,y,1,2,train\nx,y,1,train\n",
     r"t\.csv:3: expected 5 fields"),
    ("label,youtube_id,time_start,time_end,split\nx,y,one,2,train\n",
     r"t\.csv:2: time must be a number of seconds, got 'one'"),
    ('label,youtube_id,time_start,time_end,split\n"a, b,y,1,2,train\n', r"t\.csv:2: expected 5 fields"),
])
def test_malformed_csv_names_the_line(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_csv(path)


def test_labels_cli_fails_with_one_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,youtube_id,time_start,split\nx,y,1,train\n")
    proc = subprocess.run([sys.executable, "-m", "datatools.labels", str(path), str(tmp_path / "l.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}:1: missing column(s) ['time_end']; expected a header with "
        "label,youtube_id,time_start,time_end,split; got ['label', 'youtube_id', 'time_start', 'split']"]
    assert not (tmp_path / "l.txt").exists()


@pytest.mark.parametrize("relative", [
    "cooking egg, fried/abc_000001_000011.mp4",
    "cooking_egg,_fried/abc_000001_000011.mp4",
    "cooking egg, fried/abc_000001_000011.webm",
    "cooking_egg,_fried/abc_000001_000011.mkv",
    "abc_000001_000011.mp4",
])
def test_find_video_accepts_common_layouts(tmp_path, relative):
    entry = CsvEntry(2, "cooking egg, fried", "abc", 1, 11)
    assert find_video(tmp_path, entry) is None
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    assert find_video(tmp_path, entry) == path
