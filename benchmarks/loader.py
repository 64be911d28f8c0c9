"""Training-clip throughput of trainer.data against the model zoo's loader and the decode limit.

Three ways to make the same training clips (T×N frames sampled by ``ClipSampler``, one random
crop and flip, normalized) from the same JPEG frames of a converted split:

- ``records``: this project: MindDataset over the shards + the ``TrainClips`` map op
  (simplejpeg, decode only the sampled frames).
- ``reference``: the model zoo's way: one pickle per video of its JPEG bytes as its video2pkl.py
  wrote them (protocol 2, ``benchmarks/footage.py``), read by a ``GeneratorDataset``, decoded with
  PIL, cropped/flipped per image with PIL.
- ``decode limit``: only the T×N simplejpeg decodes of each clip, no dataset, no crop.

The split is ``--records`` (a converted split), or ``--videos DIR`` (every video file below it)
converted first, or by default 24 synthetic videos (150 frames at 340x256) converted first. Each
pipeline runs one map worker thread, so clips/s is per core; clips per CPU-second (process CPU
time) is reported too. Figures are medians over ``--repeats`` passes over the videos.

    python -m benchmarks.loader [--videos ~/my_clips | --records records/k400/train] [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import mindspore.dataset as ds
import numpy as np
import simplejpeg
from PIL import Image

from benchmarks.footage import convert_footage, convert_synthetic, dump_zoo_pickle, load_zoo_pickle
from datatools.cli import positive_int, run_cli
from datatools.manifest import Settings
from datatools.schema import FRAMES, LABEL, NUM_FRAMES, OFFSETS, frame_bytes
from datatools.synth import SynthSpec
from trainer.config import Config, load_config
from trainer.data import MEAN, STD, ClipSampler, create_dataset, records
from trainer.heap import keep_large_buffers

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "stnet_r50_k400.yaml"
# datatools.convert's defaults, as the README's recipe converts
SETTINGS = Settings(short_side=256, quality=90, max_fps=None, videos_per_shard=64, seed=0)
SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC = 4, 6, SynthSpec(num_frames=150, width=340, height=256)


def bench_config(split_dir: Path, seed: int) -> Config:
    """The reference recipe's clip (T=7, N=5, short side 256, crop 224), one worker thread."""
    return load_config(RECIPE, [f"data.root={split_dir.parent}", f"data.train_split={split_dir.name}",
                                "data.batch_size=1", "data.num_workers=1", f"seed={seed}"])


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


class ReferenceClips:
    """The model zoo's per-video work: unpickle, PIL-decode the sampled frames, group
    scale/crop/flip with PIL, stack, normalize to (T, 3N, crop, crop) float32."""

    def __init__(self, sampler: ClipSampler, short_side: int, crop: int, seed: int) -> None:
        self.sampler, self.short_side, self.crop = sampler, short_side, crop
        self.rng = np.random.default_rng(seed)
        self.mean = np.asarray(MEAN, np.float32)
        self.std = np.asarray(STD, np.float32)

    def __call__(self, path):
        _, label, jpegs = load_zoo_pickle(str(path))
        indices = self.sampler.train_indices(len(jpegs), self.rng)
        images = [Image.open(io.BytesIO(jpegs[i])).convert("RGB") for i in indices.ravel()]
        width, height = images[0].size
        if self.short_side and min(width, height) != self.short_side:     # 0: as stored
            scale = self.short_side / min(width, height)
            width, height = round(width * scale), round(height * scale)
            images = [im.resize((width, height), Image.BILINEAR) for im in images]
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


def run_records(cfg: Config, epoch: int) -> Iterator:
    yield from _rows(create_dataset(cfg, "train", training=True, epoch=epoch))


def run_reference(cfg: Config, pickles: list[Path], epoch: int) -> Iterator:
    op = ReferenceClips(ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment),
                        cfg.data.short_side, cfg.data.crop_size, seed=cfg.seed + epoch)
    source = ds.GeneratorDataset([(np.array(str(p)),) for p in pickles], ["path"], shuffle=True)
    data = source.map(op, input_columns=["path"], output_columns=["clip", "label"],
                      num_parallel_workers=1, python_multiprocessing=False)
    yield from _rows(data.batch(1))


def run_decode_limit(cfg: Config, videos: list[tuple[memoryview, np.ndarray]], epoch: int) -> Iterator:
    sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
    rng = np.random.default_rng([cfg.seed, epoch])
    for blob, offsets in videos:
        yield [simplejpeg.decode_jpeg(frame_bytes(blob, offsets, int(i)), fastdct=True, fastupsample=True)
               for i in sampler.train_indices(len(offsets) - 1, rng).ravel()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--videos", type=Path, default=None,
                        help="a folder of your own videos (every video file below it), converted first")
    source.add_argument("--records", type=Path, default=None,
                        help="a converted split folder (datatools.convert --out)")
    p.add_argument("--repeats", type=positive_int, default=5, help="passes per pipeline (median)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(args: argparse.Namespace) -> int:
    if args.records is not None and not args.records.is_dir():
        raise FileNotFoundError(f"--records not found: {args.records} (convert a split first)")
    keep_large_buffers()        # as trainer.runtime does first thing: before any thread's arena
    ds.config.set_num_parallel_workers(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split = args.records or (convert_footage(args.videos, tmp, SETTINGS) if args.videos else
                                 convert_synthetic(tmp, SYNTH_CLASSES, SYNTH_PER_CLASS, SYNTH_SPEC, SETTINGS))
        cfg = bench_config(split, args.seed)
        (tmp / "pickles").mkdir()
        pickles, pickle_bytes, jpeg_bytes = write_pickles(cfg, tmp / "pickles")
        videos = [(memoryview(r[FRAMES].tobytes()), r[OFFSETS]) for r in records(
            cfg, "train", training=False).create_dict_iterator(num_epochs=1, output_numpy=True)]
        pipelines = {
            "records (MindDataset + simplejpeg)": lambda e: run_records(cfg, e),
            "reference (pickle + PIL, GeneratorDataset)": lambda e: run_reference(cfg, pickles, e),
            "decode limit (T*N simplejpeg decodes)": lambda e: run_decode_limit(cfg, videos, e),
        }
        for run in pipelines.values():
            sum(1 for _ in run(0))  # warm-up: page cache, thread pools
        # Passes interleaved (one of each pipeline per repeat), so the machine's load moves all alike.
        passes = {name: [] for name in pipelines}
        for epoch in range(1, args.repeats + 1):
            for name, run in pipelines.items():
                passes[name].append(_timed(run(epoch)))
        results = {}
        for name, timed in passes.items():
            results[name] = r = Rates(*(statistics.median(getattr(p, f.name) for p in timed)
                                        for f in fields(Rates)))
            print(f"{name}: {r.steady_wall:.2f} clips/s, {r.steady_cpu:.2f} clips/CPU-s after the first "
                  f"clip of a pass; {r.wall:.2f} clips/s, {r.cpu:.2f} clips/CPU-s over the pass", flush=True)
    first = videos[0][1]
    source = args.records or args.videos or f"synthetic, {SYNTH_SPEC.width}x{SYNTH_SPEC.height}"
    print(f"{len(videos)} videos ({source}), clip T={cfg.data.num_segments} N={cfg.data.frames_per_segment} "
          f"crop={cfg.data.crop_size}, {len(first) - 1} frames in the first video, "
          f"{args.repeats} passes, 1 worker thread")
    print(f"reference pickles (protocol 2): {pickle_bytes / 1e6:.1f} MB for {jpeg_bytes / 1e6:.1f} MB of "
          f"JPEG ({pickle_bytes / jpeg_bytes:.2f}x)")
    ours, ref, limit = passes.values()
    for what, wall, cpu in (("after the first clip", "steady_wall", "steady_cpu"),
                            ("whole passes", "wall", "cpu")):
        def ratio(a: list[Rates], b: list[Rates], field: str) -> float:
            """Median over repeats of one repeat's ratio (its passes ran back to back)."""
            return statistics.median(getattr(x, field) / getattr(y, field) for x, y in zip(a, b))
        print(f"{what}: records/reference = {ratio(ours, ref, wall):.2f}x wall, "
              f"{ratio(ours, ref, cpu):.2f}x CPU; records/decode limit = {ratio(ours, limit, wall):.2f} "
              f"wall, {ratio(ours, limit, cpu):.2f} CPU (medians of per-repeat ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
