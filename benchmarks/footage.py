"""The videos a benchmark runs on, and the model zoo's storage of them.

``--videos DIR`` of the benchmarks takes any folder: every file below it with a video extension
(``datatools.lists.VIDEO_SUFFIXES``), in any layout. The videos reach ``datatools.convert`` as a
video list; without ``--videos`` a benchmark makes synthetic ones (``datatools.synth``). Either
way they are converted with ``bench_settings``: the converter's defaults, the codec always named.

The reference storage is the model zoo's ``video2pkl.py`` (research/cv/stnet/src): one pickle per
video written with ``pickle.dump((vid, label, ims), f, protocol=2)``, ``ims`` the JPEG bytes of
its frames, read back with ``pickle.load(f, encoding='bytes')``. Under Python 3, protocol 2 stores
each bytes object as latin-1 text re-encoded as UTF-8, so a pickle is ~1.5 times its JPEG bytes.
"""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

from datatools.convert import convert
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.lists import VIDEO_SUFFIXES
from datatools.manifest import Settings
from datatools.schema import LABELS_NAME
from datatools.synth import SynthSpec, make_dataset

__all__ = ["ZOO_PROTOCOL", "bench_settings", "find_videos", "write_video_list", "convert_footage",
           "convert_synthetic", "dump_zoo_pickle", "load_zoo_pickle"]

ZOO_PROTOCOL = 2


def bench_settings(codec: str, **changes) -> Settings:
    """What the benchmarks convert with: short side 256, JPEG q90 4:2:0 or h264 at the
    converter's x264 defaults, 64 videos a shard. The codec is always given: the converter's
    default codec is not what a JPEG row measures."""
    settings = replace(Settings(short_side=256, quality=90, max_fps=None, videos_per_shard=64, seed=0,
                                codec=codec), **changes)
    settings.check()
    return settings


def find_videos(root: Path) -> list[Path]:
    """Every video file below ``root``, sorted; ValueError naming ``root`` if there is none."""
    if not root.is_dir():
        raise ValueError(f"--videos {root}: not a folder")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ValueError(f"--videos {root}: no video file ({' '.join(VIDEO_SUFFIXES)}) below it")
    return videos


def write_video_list(root: Path, labelled: dict[Path, str], out: Path) -> tuple[Path, Path]:
    """``out/videos.txt`` (``datatools.convert --list``: the videos' paths under ``root`` and their
    labels, which hold no space) and ``out/labels.txt``; the two paths."""
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "videos.txt"
    listing.write_text("".join(f"{path.relative_to(root).as_posix()} {label}\n"
                               for path, label in labelled.items()))
    return listing, write_labels(class_names(labelled.values()), out / LABELS_NAME)


def convert_footage(videos: Path, work: Path, settings: Settings, workers: int = 1) -> Path:
    """Every video below ``videos`` converted into ``work/records/train`` as one class; that folder.
    ValueError if none converts."""
    split = work / "records" / "train"
    listing, labels = write_video_list(videos, {v: "footage" for v in find_videos(videos)}, split.parent)
    rows = convert(None, videos, labels, split, settings, workers=workers, video_list=str(listing)).rows
    if not any(row.ok for row in rows):
        raise ValueError(f"--videos {videos}: no video converted (e.g. {rows[0].video_id}: {rows[0].reason})")
    return split


def convert_synthetic(work: Path, classes: int, per_class: int, spec: SynthSpec, settings: Settings,
                      workers: int = 1, source: Path | None = None) -> Path:
    """``classes * per_class`` videos of datatools.synth made under ``source`` (default
    ``work/source``; kept if made there already, so two splits can share them) and converted into
    ``work/records/train``; that folder."""
    split, source = work / "records" / "train", source or work / "source"
    csv_path = source / "train.csv"
    if not csv_path.is_file():
        csv_path, _ = make_dataset(source, classes, per_class, 0, seed=0, spec=spec)
    labels = write_labels(class_names(e.label for e in read_csv(csv_path)), split.parent / LABELS_NAME)
    convert(csv_path, source / "videos", labels, split, settings, workers=workers)
    return split


def dump_zoo_pickle(path: Path, name: str, label: int, jpegs: list[bytes]) -> int:
    """Store one video as video2pkl.py did (``vid`` is ``./<name>``); the pickle's bytes."""
    with open(path, "wb") as f:
        pickle.dump((f"./{name}", label, jpegs), f, protocol=ZOO_PROTOCOL)
    return path.stat().st_size


def load_zoo_pickle(path: str | Path) -> tuple[str, int, list[bytes]]:
    """``(vid, label, jpegs)`` of one video pickle, read as the model zoo's loader reads it."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")
