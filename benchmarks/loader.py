"""Training-clip throughput of trainer.data against the model zoo's loader and the decode limit.

Three ways to make the same training clips (T×N frames sampled by ``ClipSampler``, one random
crop and flip, normalized) from the same JPEG frames of a converted split:

- ``records``: this project: MindDataset over the shards + the ``TrainClips`` map op
  (simplejpeg, decode only the sampled frames).
- ``reference``: the model zoo's way: one pickle per video holding its list of JPEG bytes,
  read by a ``GeneratorDataset``, decoded with PIL, cropped/flipped per image with PIL.
- ``decode limit``: only the T×N simplejpeg decodes of each clip, no dataset, no crop.

Each pipeline runs one map worker thread, so clips/s is per core; clips per CPU-second (process
CPU time) is reported too. Figures are medians over ``--repeats`` passes over the videos.

    python -m benchmarks.loader --records records/bench/train --repeats 5
"""
from __future__ import annotations

import argparse
import io
import pickle
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

from datatools.schema import FRAMES, LABEL, NUM_FRAMES, OFFSETS, VIDEO_ID, frame_bytes
from trainer.config import Config, load_config
from trainer.data import MEAN, STD, ClipSampler, create_dataset, records

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "stnet_r50_k400.yaml"


def bench_config(split_dir: Path, seed: int) -> Config:
    """The reference recipe's clip (T=7, N=5, short side 256, crop 224), one worker thread."""
    return load_config(RECIPE, [f"data.root={split_dir.parent}", f"data.train_split={split_dir.name}",
                                "data.batch_size=1", "data.num_workers=1", f"seed={seed}"])


def write_pickles(cfg: Config, out: Path) -> list[Path]:
    """The reference storage: one pickle per video of (list of JPEG bytes, label)."""
    paths = []
    for row in records(cfg, "train", training=False).create_dict_iterator(num_epochs=1,
                                                                           output_numpy=True):
        blob, offsets = memoryview(row[FRAMES].tobytes()), row[OFFSETS]
        jpegs = [bytes(frame_bytes(blob, offsets, i)) for i in range(int(row[NUM_FRAMES]))]
        path = out / f"{row[VIDEO_ID]}.pkl"
        path.write_bytes(pickle.dumps((jpegs, int(row[LABEL])), protocol=pickle.HIGHEST_PROTOCOL))
        paths.append(path)
    return paths


class ReferenceClips:
    """The model zoo's per-video work: unpickle, PIL-decode the sampled frames, group
    scale/crop/flip with PIL, stack, normalize to (T, 3N, crop, crop) float32."""

    def __init__(self, sampler: ClipSampler, short_side: int, crop: int, seed: int) -> None:
        self.sampler, self.short_side, self.crop = sampler, short_side, crop
        self.rng = np.random.default_rng(seed)
        self.mean = np.asarray(MEAN, np.float32)
        self.std = np.asarray(STD, np.float32)

    def __call__(self, path):
        jpegs, label = pickle.loads(Path(str(path)).read_bytes())
        indices = self.sampler.train_indices(len(jpegs), self.rng)
        images = [Image.open(io.BytesIO(jpegs[i])).convert("RGB") for i in indices.ravel()]
        width, height = images[0].size
        if min(width, height) != self.short_side:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=Path, default=Path("records/bench/train"),
                        help="a converted split folder (datatools.convert --out)")
    parser.add_argument("--repeats", type=int, default=5, help="passes per pipeline (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if not args.records.is_dir():
        print(f"error: --records not found: {args.records} (convert a split first)", file=sys.stderr)
        return 2
    ds.config.set_num_parallel_workers(1)
    cfg = bench_config(args.records, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        pickles = write_pickles(cfg, Path(tmp))
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
    print(f"{len(videos)} videos, clip T={cfg.data.num_segments} N={cfg.data.frames_per_segment} "
          f"crop={cfg.data.crop_size}, {len(first) - 1} frames in the first video, "
          f"{args.repeats} passes, 1 worker thread")
    print(f"records/reference = {ours / ref:.2f}x wall, {ours_cpu / ref_cpu:.2f}x CPU; "
          f"records/decode limit = {ours / limit:.2f} wall, {ours_cpu / limit_cpu:.2f} CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
