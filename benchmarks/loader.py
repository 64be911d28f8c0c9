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
from pathlib import Path
from typing import Callable

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


def _timed(run: Callable[[], int]) -> tuple[float, float]:
    """(clips per wall second, clips per CPU second) of one pass."""
    wall, cpu = time.perf_counter(), time.process_time()
    clips = run()
    return clips / (time.perf_counter() - wall), clips / (time.process_time() - cpu)


def _count(dataset: ds.Dataset) -> int:
    return sum(1 for _ in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))


def run_records(cfg: Config, epoch: int) -> int:
    return _count(create_dataset(cfg, "train", training=True, epoch=epoch))


def run_reference(cfg: Config, pickles: list[Path], epoch: int) -> int:
    op = ReferenceClips(ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment),
                        cfg.data.short_side, cfg.data.crop_size, seed=cfg.seed + epoch)
    source = ds.GeneratorDataset([(np.array(str(p)),) for p in pickles], ["path"], shuffle=True)
    data = source.map(op, input_columns=["path"], output_columns=["clip", "label"],
                      num_parallel_workers=1, python_multiprocessing=False)
    return _count(data.batch(1))


def run_decode_limit(cfg: Config, videos: list[tuple[memoryview, np.ndarray]], epoch: int) -> int:
    sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
    rng = np.random.default_rng([cfg.seed, epoch])
    for blob, offsets in videos:
        for i in sampler.train_indices(len(offsets) - 1, rng).ravel():
            simplejpeg.decode_jpeg(frame_bytes(blob, offsets, int(i)), fastdct=True, fastupsample=True)
    return len(videos)


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
        results = {}
        for name, run in pipelines.items():
            run(0)  # warm-up: page cache, thread pools
            passes = [_timed(lambda: run(e)) for e in range(1, args.repeats + 1)]
            results[name] = (statistics.median(p[0] for p in passes),
                             statistics.median(p[1] for p in passes))
            print(f"{name}: {results[name][0]:.2f} clips/s, {results[name][1]:.2f} clips/CPU-s",
                  flush=True)
    (ours, ours_cpu), (ref, ref_cpu), (limit, limit_cpu) = (results[n] for n in pipelines)
    first = videos[0][1]
    source = args.records or args.videos or f"synthetic, {SYNTH_SPEC.width}x{SYNTH_SPEC.height}"
    print(f"{len(videos)} videos ({source}), clip T={cfg.data.num_segments} N={cfg.data.frames_per_segment} "
          f"crop={cfg.data.crop_size}, {len(first) - 1} frames in the first video, "
          f"{args.repeats} passes, 1 worker thread")
    print(f"reference pickles (protocol 2): {pickle_bytes / 1e6:.1f} MB for {jpeg_bytes / 1e6:.1f} MB of "
          f"JPEG ({pickle_bytes / jpeg_bytes:.2f}x)")
    print(f"records/reference = {ours / ref:.2f}x wall, {ours_cpu / ref_cpu:.2f}x CPU; "
          f"records/decode limit = {ours / limit:.2f} wall, {ours_cpu / limit_cpu:.2f} CPU")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
