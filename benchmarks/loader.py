"""Training-clip CPU of trainer.data for JPEG and h264 records, against each codec's decode limit,
the model zoo's loader and the mp4 peer users pick instead, on the same videos.

The same training clips (T×N frames sampled by ``ClipSampler``, one random crop and flip) made by:

- ``<codec> records``: this project: MindDataset over the shards + the ``TrainClips`` map op
  (only the sampled frames decoded, through ``datatools.frames``; the codec is the split's stored
  setting);
- ``<codec> decode limit``: only the decodes of each clip through the same interface
  (``datatools.frames.stored_frames`` of the codec the split's manifest names): the T×N JPEGs,
  or each segment's h264 run from its keyframe, converted to RGB as far as the crop; no dataset,
  no checksum, no crop copy;
- ``peer mp4``: the same videos as 256p mp4 files (libx264 defaults, a keyframe every 16
  frames: MMAction2's resized videos), each clip read as MMAction2's PyAV decoder reads it
  (``benchmarks/peer.py``), in a plain loop: no dataset (the peer's own pipeline is not counted);
- ``reference`` (JPEG splits): the model zoo's way: one pickle per video of its JPEG bytes as its
  video2pkl.py wrote them (protocol 2, ``benchmarks/footage.py``), read by a
  ``GeneratorDataset``, decoded with PIL, squashed to 341x256, cropped/flipped per image with PIL, normalized.

The videos are ``--videos DIR`` (every video file below it) or by default 24 synthetic videos (150
frames at 340x256), converted twice, JPEG q90 and h264 (crf 18, GOP 8: the converter's
settings), or ``--records SPLIT``, a split converted already, measured in its own codec (the
peer is made from the sources its manifest names, when they are still there). A pass goes over
the videos until it has made ``--clips`` clips; every pipeline runs one map worker thread, so
clips/s is per core, and clips per CPU-second (process CPU time) is the per-core figure a loaded
machine keeps. The pipelines run interleaved, one pass each per repeat; ratios are medians over
``--repeats`` of each repeat's ratio.

    python -m benchmarks.loader [--videos ~/my_clips | --records records/k400/train] [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import mindspore.dataset as ds
import numpy as np
from PIL import Image

from benchmarks.footage import (bench_settings, convert_footage, convert_synthetic, dump_zoo_pickle,
                                find_videos, load_zoo_pickle)
from benchmarks.peer import PeerClips, peer_from_video
from datatools.cli import positive_int, run_cli
from datatools.manifest import H264, JPEG, STATUS_OK, Settings, read_manifest, read_settings
from datatools.schema import FRAMES, LABEL, NUM_FRAMES, OFFSETS, frame_bytes
from datatools.synth import SynthSpec
from trainer.config import Config, load_config
from trainer.data import MEAN, STD, ClipDecoder, ClipSampler, clip_decoder, create_dataset, records
from trainer.heap import keep_large_buffers

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "stnet_r50_k400.yaml"
SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC = 4, 6, SynthSpec(num_frames=150, width=340, height=256)
PEER, REFERENCE = "peer mp4", "reference"


def bench_config(split_dir: Path, seed: int) -> Config:
    """The reference recipe's clip (T=7, N=5, short side 256, crop 224), one worker thread."""
    return load_config(RECIPE, [f"data.root={split_dir.parent}", f"data.train_split={split_dir.name}",
                                "data.batch_size=1", "data.num_workers=1", f"seed={seed}"])


@dataclass
class Split:
    """A converted split under test: its config, its clip decoder (the codec from its manifest)
    and its videos' frame blobs."""

    cfg: Config
    decoder: ClipDecoder
    videos: list[tuple[memoryview, np.ndarray]]
    sources: list[Path]         # the source of each converted video, as the manifest names it
    settings: Settings | None   # as stored (None: a manifest without them)

    @classmethod
    def open(cls, folder: Path, seed: int) -> "Split":
        cfg = bench_config(folder, seed)
        table = read_manifest(folder)
        ok = [s for s, status in zip(table.column("source").to_pylist(), table.column("status").to_pylist())
              if status == STATUS_OK]
        rows = records(cfg, "train", training=False).create_dict_iterator(num_epochs=1, output_numpy=True)
        videos = [(memoryview(r[FRAMES].tobytes()), r[OFFSETS]) for r in rows]
        return cls(cfg, clip_decoder(cfg, "train", cfg.data.crop_size), videos, [Path(s) for s in ok],
                   read_settings(table))

    @property
    def codec(self) -> str:
        return self.decoder.frames.codec

    @property
    def frames(self) -> int:
        return sum(len(offsets) - 1 for _, offsets in self.videos)

    @property
    def frame_bytes(self) -> int:
        return sum(int(offsets[-1]) for _, offsets in self.videos)


def write_pickles(cfg: Config, out: Path) -> tuple[list[Path], int, int]:
    """The reference storage: one pickle per video as video2pkl.py wrote them; the pickles, their
    bytes and their JPEG bytes."""
    paths, pickle_bytes, jpeg_bytes = [], 0, 0
    rows = records(cfg, "train", training=False).create_dict_iterator(num_epochs=1, output_numpy=True)
    for i, row in enumerate(rows):
        blob, offsets = memoryview(row[FRAMES].tobytes()), row[OFFSETS]
        jpegs = [bytes(frame_bytes(blob, offsets, j)) for j in range(int(row[NUM_FRAMES]))]
        paths.append(out / f"{i:06d}.pkl")
        pickle_bytes += dump_zoo_pickle(paths[-1], f"{i:06d}", int(row[LABEL]), jpegs)
        jpeg_bytes += len(blob)
    return paths, pickle_bytes, jpeg_bytes


# The model zoo's loader squashes every frame to this size (width, height) before its crop, so it
# reads any footage: a source smaller than the crop (176x144) included.
ZOO_SIZE = (341, 256)


class ReferenceClips:
    """The model zoo's per-video work: unpickle, PIL-decode the sampled frames, group
    squash to ZOO_SIZE/crop/flip with PIL, stack, normalize to (T, 3N, crop, crop) float32."""

    def __init__(self, sampler: ClipSampler, crop: int, seed: int) -> None:
        self.sampler, self.crop = sampler, crop
        self.rng = np.random.default_rng(seed)
        self.mean = np.asarray(MEAN, np.float32)
        self.std = np.asarray(STD, np.float32)

    def __call__(self, path):
        _, label, jpegs = load_zoo_pickle(str(path))
        indices = self.sampler.train_indices(len(jpegs), self.rng)
        images = [Image.open(io.BytesIO(jpegs[i])).convert("RGB") for i in indices.ravel()]
        if images[0].size != ZOO_SIZE:
            images = [im.resize(ZOO_SIZE, Image.BILINEAR) for im in images]
        width, height = ZOO_SIZE
        top = int(self.rng.integers(0, height - self.crop + 1))
        left = int(self.rng.integers(0, width - self.crop + 1))
        flip = self.rng.random() < 0.5
        box = (left, top, left + self.crop, top + self.crop)
        images = [im.crop(box) for im in images]
        if flip:
            images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        clip = (np.stack([np.asarray(im, np.float32) for im in images]) / 255.0 - self.mean) / self.std
        t, n = indices.shape
        clip = clip.reshape(t, n, self.crop, self.crop, 3).transpose(0, 1, 4, 2, 3)
        return clip.reshape(t, 3 * n, self.crop, self.crop).astype(np.float32), np.int32(label)


@dataclass(frozen=True)
class Rates:
    """Clips per wall second and per CPU second of one pass: over the whole pass, and after its
    first clip (steady: what an epoch of thousands of videos runs at, a pipeline's ~60 ms
    start-up spread over it)."""

    wall: float
    cpu: float
    steady_wall: float
    steady_cpu: float


def _timed(clips: Iterator) -> Rates:
    wall, cpu = time.perf_counter(), time.process_time()
    next(clips)
    first_wall, first_cpu = time.perf_counter(), time.process_time()
    rest = sum(1 for _ in clips)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    return Rates((rest + 1) / (end_wall - wall), (rest + 1) / (end_cpu - cpu),
                 rest / (end_wall - first_wall), rest / (end_cpu - first_cpu))


def _rows(dataset: ds.Dataset) -> Iterator:
    yield from dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)


def run_records(cfg: Config, epoch: int, rounds: int) -> Iterator:
    """The trainer's pipeline for ``epoch``, over the split ``rounds`` times."""
    yield from _rows(create_dataset(cfg, "train", training=True, epoch=epoch).repeat(rounds))


def run_reference(split: Split, pickles: list[Path], epoch: int, rounds: int) -> Iterator:
    """The model zoo's pipeline: frames squashed to ZOO_SIZE, as it does."""
    cfg = split.cfg
    op = ReferenceClips(ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment),
                        cfg.data.crop_size, seed=cfg.seed + epoch)
    source = ds.GeneratorDataset([(np.array(str(p)),) for p in pickles * rounds], ["path"], shuffle=True)
    data = source.map(op, input_columns=["path"], output_columns=["clip", "label"],
                      num_parallel_workers=1, python_multiprocessing=False)
    yield from _rows(data.batch(1))


def run_decode_limit(split: Split, epoch: int, rounds: int) -> Iterator:
    """Only the decodes of each clip, through ``datatools.frames`` (the split's codec): the
    distinct sampled frames in ascending order, each converted only as far as the clip's random
    crop box where the loader needs no scaling (as ``ClipDecoder.views`` decodes), whole otherwise."""
    cfg, decoder, frames = split.cfg, split.decoder, split.decoder.frames
    sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
    rng, crop = np.random.default_rng([cfg.seed, epoch]), cfg.data.crop_size
    for _ in range(rounds):
        for blob, offsets in split.videos:
            order = sorted(set(sampler.train_indices(len(offsets) - 1, rng).ravel().tolist()))
            size = frames.size(blob, offsets, order[0])
            region = None
            if decoder.scaled_size(*size) == size:
                top, left = int(rng.integers(0, size[0] - crop + 1)), int(rng.integers(0, size[1] - crop + 1))
                region = (top, left, crop, crop)
            yield sum(1 for _ in frames.decode(blob, offsets, order, region))


def run_peer(reader: PeerClips, peers: list[Path], seed: int, epoch: int, rounds: int) -> Iterator:
    """MMAction2's PyAVInit + decode per clip: the file's bytes read, then the clip."""
    for r in range(rounds):
        for path in peers:
            yield reader(path.read_bytes(), np.random.default_rng([seed, epoch, r, zlib.crc32(path.name.encode())]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--videos", type=Path, default=None,
                        help="a folder of your own videos (every video file below it), converted first, "
                             "JPEG and h264")
    source.add_argument("--records", type=Path, default=None,
                        help="a converted split folder (datatools.convert --out), measured in its codec")
    p.add_argument("--repeats", type=positive_int, default=5, help="passes per pipeline (median)")
    p.add_argument("--clips", type=positive_int, default=24,
                   help="clips per pass at least: the videos are gone over as many times as it takes")
    p.add_argument("--seed", type=int, default=0)
    return p


def _splits(args: argparse.Namespace, tmp: Path) -> list[Path]:
    if args.records is not None:
        return [args.records]
    made = []
    for codec in (JPEG, H264):
        settings = bench_settings(codec)
        made.append(convert_footage(args.videos, tmp / codec, settings) if args.videos else
                    convert_synthetic(tmp / codec, SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC, settings,
                                      source=tmp / "source"))
    return made


def _peers(split: Split, out: Path) -> list[Path]:
    """The peer of each of the split's sources that is still there (none if one is missing)."""
    if not split.sources or not all(s.is_file() for s in split.sources):
        return []
    out.mkdir()
    stored = split.settings
    short, max_fps = (stored.short_side, stored.max_fps) if stored else (split.decoder.short_side, None)
    paths = [out / f"{i:06d}.mp4" for i in range(len(split.sources))]
    for source, path in zip(split.sources, paths):
        peer_from_video(source, path, short, max_fps)
    return paths


@dataclass
class Pipeline:
    run: Callable[[int], Iterator]
    stored: int         # bytes a clip reads: its whole video (a record's frames, a pickle, an mp4)
    frames: int         # frames stored, over the videos
    videos: int


def main(args: argparse.Namespace) -> int:
    if args.records is not None and not args.records.is_dir():
        raise FileNotFoundError(f"--records not found: {args.records} (convert a split first)")
    if args.videos is not None:
        find_videos(args.videos)        # a clear error before any work
    keep_large_buffers()        # as trainer.runtime does first thing: before any thread's arena
    ds.config.set_num_parallel_workers(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = [Split.open(folder, args.seed) for folder in _splits(args, tmp)]
        count = len(splits[0].videos)
        rounds = math.ceil(max(args.clips, 2) / count)     # a pass's rate is after its first clip
        pipelines: dict[str, Pipeline] = {}
        for s in splits:
            pipelines[_records(s.codec)] = Pipeline(
                lambda e, s=s: run_records(s.cfg, e, rounds), s.frame_bytes, s.frames, len(s.videos))
            pipelines[f"{s.codec} decode limit"] = Pipeline(
                lambda e, s=s: run_decode_limit(s, e, rounds), s.frame_bytes, s.frames, len(s.videos))
        notes = []
        peers = _peers(splits[0], tmp / "peer")
        if peers:
            cfg = splits[0].cfg
            reader = PeerClips(ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment),
                               splits[0].decoder.short_side, cfg.data.crop_size)
            pipelines[PEER] = Pipeline(lambda e: run_peer(reader, peers, args.seed, e, rounds),
                                       sum(p.stat().st_size for p in peers), splits[0].frames, len(peers))
        else:
            notes.append("peer mp4 skipped: the split's manifest names sources that are not there")
        jpeg = next((s for s in splits if s.codec == JPEG), None)
        if jpeg is not None:
            (tmp / "pickles").mkdir()
            pickles, pickle_bytes, _ = write_pickles(jpeg.cfg, tmp / "pickles")
            pipelines[REFERENCE] = Pipeline(lambda e: run_reference(jpeg, pickles, e, rounds),
                                            pickle_bytes, jpeg.frames, len(pickles))
        else:
            notes.append("reference (pickle + PIL) skipped: the model zoo stores JPEG, this split is "
                         f"{splits[0].codec}")
        for pipeline in pipelines.values():
            sum(1 for _ in pipeline.run(0))     # warm-up: page cache, thread pools
        # Passes interleaved (one of each pipeline per repeat), so the machine's load moves all alike.
        passes = {name: [] for name in pipelines}
        for epoch in range(1, args.repeats + 1):
            for name, pipeline in pipelines.items():
                passes[name].append(_timed(pipeline.run(epoch)))
    first = splits[0].videos[0][1]
    source = args.records or args.videos or f"synthetic, {SYNTH_SPEC.width}x{SYNTH_SPEC.height}"
    cfg = splits[0].cfg
    print(f"{count} videos ({source}), {len(first) - 1} frames in the first; clip T={cfg.data.num_segments} "
          f"N={cfg.data.frames_per_segment} crop={cfg.data.crop_size}; {rounds * count} clips a pass, "
          f"{args.repeats} passes, 1 worker thread; medians")
    for note in notes:
        print(note)
    _print_pipelines(pipelines, passes)
    _print_ratios(pipelines, passes, [s.codec for s in splits])
    return 0


def _records(codec: str) -> str:
    return f"{codec} records"


def _median(passes: list[Rates]) -> Rates:
    return Rates(*(statistics.median(getattr(p, f.name) for p in passes) for f in fields(Rates)))


def _print_pipelines(pipelines: dict[str, Pipeline], passes: dict[str, list[Rates]]) -> None:
    print("\n| pipeline | KB/frame | KB read/clip | clips/s (wall) | clips/CPU-s | CPU ms/clip | "
          "CPU ms/clip, whole passes |")
    print("|---|---|---|---|---|---|---|")
    for name, p in pipelines.items():
        r = _median(passes[name])
        print(f"| {name} | {p.stored / p.frames / 1e3:.1f} | {p.stored / p.videos / 1e3:.0f} | "
              f"{r.steady_wall:.1f} | {r.steady_cpu:.1f} | {1e3 / r.steady_cpu:.1f} | {1e3 / r.cpu:.1f} |")


def _print_ratios(pipelines: dict[str, Pipeline], passes: dict[str, list[Rates]], codecs: list[str]) -> None:
    """a/b of CPU per clip (after a pass's first clip, and over whole passes) and of bytes."""
    pairs = [(_records(c), f"{c} decode limit") for c in codecs]
    if JPEG in codecs:
        pairs.append((_records(JPEG), REFERENCE))
    if len(codecs) == 2:
        pairs.append((_records(H264), _records(JPEG)))
    pairs += [(_records(c), PEER) for c in reversed(codecs)]
    print("\n| a / b (medians of per-repeat ratios) | CPU per clip | CPU per clip, whole passes | "
          "wall per clip | bytes |")
    print("|---|---|---|---|---|")
    for a, b in pairs:
        if a not in passes or b not in passes:
            continue

        def ratio(field: str) -> float:
            """b's clips per unit over a's in each repeat (their passes ran back to back): a's
            cost per clip over b's."""
            return statistics.median(getattr(y, field) / getattr(x, field) for x, y in zip(passes[a], passes[b]))
        bytes_ratio = (pipelines[a].stored / pipelines[a].videos) / (pipelines[b].stored / pipelines[b].videos)
        print(f"| {a} / {b} | {ratio('steady_cpu'):.2f} | {ratio('cpu'):.2f} | {ratio('steady_wall'):.2f} "
              f"| {bytes_ratio:.2f} |")


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
