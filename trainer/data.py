"""Clips for StNet from MindRecord shards: sampling, decode, crop/flip.

One record is one video (``datatools.schema``): its encoded frames in one blob plus byte offsets,
so a clip decodes only the frames it uses, read from the record without a copy: T×N JPEGs, or
for h264 each segment's run from its keyframe (``datatools.frames``, the codec from the split's
stored settings, never from the config). A clip
leaves the loader as uint8 pixels: normalization and the channel layout belong to the network
(``trainer.precision.PixelInput``), on the device, where they cost nothing next to the
convolutions, while on the host they took a third of a clip's CPU time (benchmarks/README.md).
The map op runs in threads (simplejpeg and cv2 release the GIL, and threads avoid copying each
clip between processes; docs/design.md §7).
Every random choice comes from ``(seed, epoch)`` (shuffle) or a per-sample generator seeded by
``(seed, epoch, video_id)`` (sampling, crop, flip), so a run is reproducible whatever thread
handles which sample, and a training dataset is built per epoch.

Every sample is checked against the CRC-32 the converter stored with it
(``datatools.schema.sample_checksum``, over the whole blob; its cost: docs/design.md §4), and a
frame that does not decode is caught. A map op cannot drop a row, so it returns a ``problem``
column ("" for a sound sample): training keeps the batch's shape with a zero clip labelled
``IGNORE_LABEL``, which the loss leaves out (``trainer.train_step``) and ``trainer.train``
counts; evaluation refuses it (``trainer.eval``).
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from pathlib import Path

import cv2
import mindspore.dataset as ds
import numpy as np
from PIL import Image

from datatools.frames import FrameError, codec_of, stored_frames
from datatools.manifest import JPEG, SOURCE_SIZE_COLUMNS, read_manifest, read_settings, source_sizes
from datatools.openfiles import split_shards
from datatools.schema import (CHECKSUM, FRAMES, LABEL, LABELS_NAME, NUM_FRAMES, OFFSETS, VIDEO_ID,
                              read_labels, sample_checksum, split_labels_problem)
from trainer.config import RESIZE_MODES, TEST_CROPS, Config, ConfigError
from trainer.heap import keep_large_buffers

__all__ = ["MEAN", "STD", "CLIP", "MASK", "PROBLEM", "IGNORE_LABEL", "RESIZE_MODES", "BadSample",
           "ClipSampler", "ClipDecoder", "TrainClips", "EvalClips", "bad_samples", "clip_decoder",
           "build_decoder", "eval_clips", "views_per_video", "labels_path", "class_names", "check_records",
           "check_split_labels", "split_name", "split_dir", "records", "create_dataset"]

logger = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Output columns besides the schema's LABEL and VIDEO_ID.
CLIP = "clip"
MASK = "mask"
PROBLEM = "problem"     # "" for a sound sample, else "video <id>: <what is wrong>"
# The label of a bad training sample: the loss leaves it out (trainer.train_step.MaskedCrossEntropy).
IGNORE_LABEL = -100
SPLIT_KEYS = ("train", "val")
_LOGGED: set[str] = set()
_READ_COLUMNS = [FRAMES, OFFSETS, NUM_FRAMES, LABEL, VIDEO_ID, CHECKSUM]


class BadSample(ValueError):
    """A stored sample that is not what the converter wrote; the message says what differs."""


def _check_sample(blob: memoryview, offsets: np.ndarray, num_frames: int, label: int, video_id: str,
                  checksum: int) -> None:
    """Raise BadSample unless the sample's CRC-32 is the stored one and its frame count fits."""
    if sample_checksum(video_id, label, offsets, blob) != checksum:
        raise BadSample("checksum mismatch")
    if num_frames != len(offsets) - 1:   # num_frames is outside the checksum
        raise BadSample(f"num_frames {num_frames} but {len(offsets) - 1} frames")


def bad_samples(problems: np.ndarray) -> list[str]:
    """The non-empty texts of a batch's ``problem`` column."""
    return [str(p) for p in problems if p]


class ClipSampler:
    """Frame indices of T segments × N consecutive frames (StNet / TSN style, docs/design.md §6).

    Reads only ``num_frames`` of a video. The video is cut into T segments of
    ``avg = num_frames // T`` frames; segment i contributes N consecutive frames starting at
    ``i·avg + offset``. Training draws ``offset`` in ``0..avg−N``; testing centres it, and with
    K clips per video spreads the K offsets evenly over ``0..avg−N`` (K=1 is the centred clip).
    When ``avg < N`` the run starts at the segment start, when ``avg == 0`` at frame i; indices
    past the end wrap (``% num_frames``), so a short video repeats its frames instead of failing.

    Returns int64 arrays: ``train_indices`` (T, N), ``test_indices`` (K, T, N).
    """

    def __init__(self, num_segments: int, frames_per_segment: int) -> None:
        for name, value in (("num_segments", num_segments), ("frames_per_segment", frames_per_segment)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.num_segments = num_segments
        self.frames_per_segment = frames_per_segment

    def _check(self, num_frames: int) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")

    def _indices(self, num_frames: int, offsets: np.ndarray) -> np.ndarray:
        """(…, T, N) indices from per-segment offsets of shape (…, T)."""
        avg = num_frames // self.num_segments
        segment = np.arange(self.num_segments, dtype=np.int64)
        starts = segment * avg + offsets if avg >= 1 else np.broadcast_to(segment, offsets.shape)
        return (starts[..., None] + np.arange(self.frames_per_segment)) % num_frames

    def _spare(self, num_frames: int) -> int:
        """Free frames in a segment after its N-frame run (0 when the segment is too short)."""
        return max(num_frames // self.num_segments - self.frames_per_segment, 0)

    def train_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """(T, N): a random run inside each segment."""
        self._check(num_frames)
        offsets = rng.integers(0, self._spare(num_frames) + 1, size=self.num_segments)
        return self._indices(num_frames, offsets)

    def test_indices(self, num_frames: int, num_clips: int = 1) -> np.ndarray:
        """(K, T, N): K clips whose runs sit at (2k+1)/(2K) of each segment's free range."""
        self._check(num_frames)
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips!r}")
        k = np.arange(num_clips, dtype=np.int64)
        offsets = (self._spare(num_frames) * (2 * k + 1)) // (2 * num_clips)
        return self._indices(num_frames, np.repeat(offsets[:, None], self.num_segments, axis=1))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_segments={self.num_segments}, "
                f"frames_per_segment={self.frames_per_segment})")


class ClipDecoder:
    """Decode the frames a clip uses, crop them at its boxes, flip, normalize.

    Reads the record's ``frames`` blob and ``offsets`` and scales each frame (``scaled_size``)
    before cropping. ``resize="keep"``: the aspect is kept and the short side becomes
    ``short_side`` (the converter never upscales, so small sources are scaled up here).
    ``resize="zoo"`` reproduces the model zoo's pixels: a frame whose *source* short side is not
    ``short_side`` is squashed to ``int(short_side·4/3)×short_side`` (341×256, portrait
    256×341) with PIL's bilinear filter, from the stored frame in one resize; a video in
    ``source_sizes`` (those whose source short side is already ``short_side``) is seen at its
    source size, as the reference leaves it; JPEGs are decoded with libjpeg's accurate DCT and upsampling, as PIL does; the centre crop sits at
    ``round((w−crop)/2)`` (half to even), not the floor.

    Returns uint8 pixels (T, N, crop, crop, 3) by default: what the network takes
    (``trainer.precision.PixelInput`` normalizes and lays them out on the device). A row copy
    per frame is all the host does after decoding, and a clip is 4× fewer bytes than float32.
    With ``normalize=True``: float32 (T, 3N, crop, crop), normalized on the host, the N frames of
    a segment stacked as N RGB triples, as the model zoo's graph takes them (the 310 path's
    ``--float-input``).
    """

    def __init__(self, short_side: int, crop: int, normalize: bool = False, *, resize: str = "keep",
                 source_sizes: dict[str, tuple[int, int]] | None = None, codec: str = JPEG) -> None:
        if crop < 1 or crop > short_side:
            raise ValueError(f"crop must be in 1..short_side={short_side}, got {crop!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"data.resize must be one of {'|'.join(RESIZE_MODES)}, got {resize!r}")
        self.short_side = short_side
        self.crop = crop
        self.normalize = normalize
        self.resize = resize
        self.source_sizes = source_sizes or {}
        self.dtype = np.float32 if normalize else np.uint8
        self.frames = stored_frames(codec)
        # uint8 -> normalized float32 per channel as a lookup table: cv2.LUT writes each plane
        # straight into the output, ~10x faster than numpy's cast + HWC->CHW transpose.
        levels = np.arange(256, dtype=np.float32)[None] / 255.0
        self._lut = np.ascontiguousarray(
            (levels - np.asarray(MEAN, np.float32)[:, None]) / np.asarray(STD, np.float32)[:, None])

    def scaled_size(self, height: int, width: int, video_id: str = "") -> tuple[int, int]:
        """(height, width) a stored frame of ``video_id`` is scaled to before cropping."""
        if self.resize == "zoo":
            if video_id in self.source_sizes:
                return self.source_sizes[video_id]
            long_side = int(self.short_side * 4 / 3)
            return (long_side, self.short_side) if height > width else (self.short_side, long_side)
        short = min(height, width)
        if short == self.short_side:
            return height, width
        return round(height * self.short_side / short), round(width * self.short_side / short)

    def center_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop: floor for ``keep``, the zoo's half-to-even rounding."""
        if self.resize == "zoo":
            return round((height - self.crop) / 2), round((width - self.crop) / 2)
        return (height - self.crop) // 2, (width - self.crop) // 2

    def test_boxes(self, height: int, width: int, crops: int) -> list[tuple[int, int]]:
        """(top, left) of each test crop: the centre one, or with ``crops=3`` the start, centre
        and end of the long side (left/centre/right; top/centre/bottom for portrait), centred
        across the short side, as SlowFast and MMAction2 take them."""
        if crops not in TEST_CROPS:
            raise ValueError(f"test.crops must be one of {'|'.join(map(str, TEST_CROPS))}, got {crops!r}")
        top, left = self.center_box(height, width)
        if crops == 1:
            return [(top, left)]
        if height > width:
            return [(0, left), (top, left), (height - self.crop, left)]
        return [(top, 0), (top, left), (top, width - self.crop)]

    def _scale(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        if self.resize == "zoo":   # the reference's PIL bilinear (a filter sized to the scale)
            return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)

    def frame_size(self, blob: memoryview, offsets: np.ndarray, index: int,
                   video_id: str = "") -> tuple[int, int]:
        """(height, width) frame ``index`` is cropped at, from its JPEG header or its h264 GOP's
        SPS alone (crop boxes are drawn before any frame is decoded)."""
        return self.scaled_size(*self._stored_size(blob, offsets, index), video_id)

    def _stored_size(self, blob: memoryview, offsets: np.ndarray, index: int) -> tuple[int, int]:
        try:
            return self.frames.size(blob, offsets, index)
        except FrameError as exc:
            raise BadSample(str(exc)) from None

    def views(self, blob: memoryview, offsets: np.ndarray, indices: np.ndarray,
              boxes: list[tuple[int, int]], flip: bool, video_id: str = "") -> np.ndarray:
        """The clips of ``indices`` (K, T, N) cropped at each (top, left) of ``boxes``: (K·C,
        *clip_shape), clip-major (view ``k·C + c``), flipped if ``flip``.

        Each distinct frame is decoded once, in ascending order (``datatools.frames``: an h264
        run from its keyframe), and its crops written straight into the output (flipped and,
        with ``normalize``, normalized on the way): one pass over the pixels after decoding.
        A frame that needs no scaling is converted only as far as the boxes reach. BadSample for
        a frame that does not decode or whose size is not the first frame's.
        """
        clips, t, n = indices.shape
        c = self.crop
        frame_shape = (3, c, c) if self.normalize else (c, c, 3)
        out = np.empty((clips, len(boxes), t * n, *frame_shape), self.dtype)
        places: dict[int, list[tuple[int, int]]] = {}
        for k in range(clips):
            for j, index in enumerate(indices[k].ravel().tolist()):
                places.setdefault(index, []).append((k, j))
        order = sorted(places)
        size = self._stored_size(blob, offsets, order[0])
        scaled = self.scaled_size(*size, video_id)
        region = None
        if scaled == size:      # crop straight from the stored frame: decode only the boxes' extent
            top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
            region = (top, left, max(b[0] for b in boxes) + c - top, max(b[1] for b in boxes) + c - left)
        origin = region[:2] if region else (0, 0)
        try:
            for index, whole, image in self.frames.decode(blob, offsets, order, region,
                                                          accurate=self.resize == "zoo"):
                if whole != size:
                    raise BadSample(f"frame {index} is {whole[1]}x{whole[0]}, frame {order[0]} "
                                    f"{size[1]}x{size[0]}")
                if region is None:
                    image = self._scale(image, *scaled)
                (k, j), *repeats = places[index]
                for b, (top, left) in enumerate(boxes):
                    top, left = top - origin[0], left - origin[1]
                    self._put(image[top:top + c, left:left + c], flip, out[k, b, j])
                for k2, j2 in repeats:
                    out[k2, :, j2] = out[k, :, j]
        except FrameError as exc:
            raise BadSample(str(exc)) from None
        return out.reshape(clips * len(boxes), *self.clip_shape(t, n))

    def _put(self, patch: np.ndarray, flip: bool, target: np.ndarray) -> None:
        """Write a (c, c, 3) crop into ``target``: uint8 (c, c, 3), or normalized (3, c, c)."""
        if not self.normalize:
            if flip:
                cv2.flip(patch, 1, dst=target)
            else:
                target[...] = patch
            return
        patch = cv2.flip(patch, 1) if flip else np.ascontiguousarray(patch)
        for channel, plane in enumerate(cv2.split(patch)):
            cv2.LUT(plane, self._lut[channel], dst=target[channel])

    def clip_shape(self, num_segments: int, frames_per_segment: int) -> tuple[int, ...]:
        """Shape of one clip: (T, N, S, S, 3) pixels, or (T, 3N, S, S) normalized."""
        c = self.crop
        if self.normalize:
            return num_segments, 3 * frames_per_segment, c, c
        return num_segments, frames_per_segment, c, c, 3

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(short_side={self.short_side}, crop={self.crop}, "
                f"normalize={self.normalize}, codec={self.frames.codec})")


def _blob(frames: np.ndarray) -> memoryview:
    """The bytes of MindRecord's numpy |S array, trailing NULs included, without a copy (the
    blob is a whole video: ~8 MB for a 10 s Kinetics clip at short side 256)."""
    return memoryview(np.frombuffer(frames, np.uint8))


class TrainClips:
    """Map op for training: (frames, offsets, num_frames, label, video_id, checksum) → (clip,
    label, problem).

    One random segment offset set, one random crop box and one flip per clip, drawn from a
    generator seeded by ``(seed, epoch, crc32(video_id))``: the same video gets new draws each
    epoch, and a resumed run (a new dataset for its epoch) draws what an uninterrupted one did.
    A bad sample (checksum mismatch, a frame that does not decode) becomes a zero clip labelled
    ``IGNORE_LABEL``, with its problem text.
    """

    def __init__(self, sampler: ClipSampler, decoder: ClipDecoder, seed: int, epoch: int) -> None:
        self.sampler = sampler
        self.decoder = decoder
        self.seed = seed
        self.epoch = epoch

    def __call__(self, frames, offsets, num_frames, label, video_id, checksum):
        video_id = str(video_id)
        try:
            blob = _blob(frames)
            _check_sample(blob, offsets, int(num_frames), int(label), video_id, int(checksum))
            return self._clip(blob, offsets, int(num_frames), video_id), np.int32(label), ""
        except BadSample as exc:
            shape = self.decoder.clip_shape(self.sampler.num_segments, self.sampler.frames_per_segment)
            return np.zeros(shape, self.decoder.dtype), np.int32(IGNORE_LABEL), f"video {video_id}: {exc}"

    def _clip(self, blob: memoryview, offsets: np.ndarray, num_frames: int,
              video_id: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(video_id.encode())])
        indices = self.sampler.train_indices(num_frames, rng)
        height, width = self.decoder.frame_size(blob, offsets, int(indices.flat[0]), video_id)
        crop = self.decoder.crop
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        flip = bool(rng.random() < 0.5)
        return self.decoder.views(blob, offsets, indices[None], [(top, left)], flip, video_id)[0]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.sampler!r}, {self.decoder!r}, seed={self.seed}, "
                f"epoch={self.epoch})")


class EvalClips:
    """Map op for evaluation: (frames, offsets, num_frames, label, video_id, checksum) → (clip
    (V, *``ClipDecoder.clip_shape``), label, mask, video_id, problem), deterministic.

    V = K·C views per video: K temporal clips (``ClipSampler.test_indices``) × C spatial crops
    (``ClipDecoder.test_boxes``), clip-major (view ``k·C + c``); every view is scored alike
    (``trainer.scoring``). A padded sample
    (``num_frames == 0``, added so every rank gets the same count) yields zeros and mask 0; so
    does a bad sample, whose problem text is the error ``trainer.eval`` raises (naming
    ``folder``, the split, for ``datatools.inspect``).
    """

    def __init__(self, sampler: ClipSampler, decoder: ClipDecoder, num_clips: int,
                 folder: str | Path, crops: int = 1) -> None:
        self.sampler = sampler
        self.decoder = decoder
        self.num_clips = num_clips
        self.crops = crops
        self.folder = folder

    def __call__(self, frames, offsets, num_frames, label, video_id, checksum):
        try:
            blob = _blob(frames)
            _check_sample(blob, offsets, int(num_frames), int(label), str(video_id), int(checksum))
            if int(num_frames) == 0:   # padding, checked like any row (_padded_sample)
                return self._empty(), np.int32(label), np.int32(0), video_id, ""
            clips = self.views(blob, offsets, int(num_frames), str(video_id))
            return clips, np.int32(label), np.int32(1), video_id, ""
        except BadSample as exc:
            return self._empty(), np.int32(label), np.int32(0), video_id, (
                f"video {video_id}: {exc}: metrics are not computed on altered data; run "
                f"datatools.inspect {self.folder}")

    def _empty(self) -> np.ndarray:
        """Zero views, for a padded or bad sample (masked out)."""
        shape = self.decoder.clip_shape(self.sampler.num_segments, self.sampler.frames_per_segment)
        return np.zeros((self.num_clips * self.crops, *shape), self.decoder.dtype)

    def views(self, blob: bytes | memoryview, offsets: np.ndarray, num_frames: int,
              video_id: str = "", first: int = 0) -> np.ndarray:
        """(K·C, *clip_shape) views of frames ``first..first+num_frames-1`` of one video
        (``trainer.predict`` calls it on frames it encoded itself, so a prediction sees the
        pixels an evaluation does, and on windows of them: an h264 window decodes from the
        keyframe before it, so the blob is never cut)."""
        indices = first + self.sampler.test_indices(num_frames, self.num_clips)
        size = self.decoder.frame_size(blob, offsets, int(indices.flat[0]), video_id)
        return self.decoder.views(blob, offsets, indices, self.decoder.test_boxes(*size, self.crops),
                                  False, video_id)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.sampler!r}, {self.decoder!r}, num_clips={self.num_clips}, "
                f"crops={self.crops})")


def labels_path(cfg: Config) -> Path:
    """The label file of the records: ``data.root``/labels.txt, shared by the splits."""
    return Path(cfg.data.root) / LABELS_NAME


def class_names(cfg: Config) -> list[str]:
    """The records' class names; refused unless their count is ``model.num_classes`` (a network
    of another width would train or score without a word, or fail at the first evaluation)."""
    path = labels_path(cfg)
    names = read_labels(path)
    if len(names) != cfg.model.num_classes:
        raise ValueError(f"{path} has {len(names)} classes but model.num_classes={cfg.model.num_classes}: "
                         f"set model.num_classes={len(names)}, or data.root to the records the "
                         f"model is for")
    return names


def check_records(cfg: Config, splits: tuple[str, ...] = SPLIT_KEYS) -> list[str]:
    """The class names, once the label file matches ``model.num_classes``, every one of
    ``splits`` was converted with it and this process may open all their shards at once
    (``datatools.openfiles``); called where a run starts, before the network and any pipeline."""
    for split in splits:
        split_dir(cfg, split)       # a wrong data.root is named by its missing split folders first
    if not labels_path(cfg).is_file():
        raise FileNotFoundError(f"label file not found: {labels_path(cfg)} (data.root={cfg.data.root!r}; "
                                f"datatools.labels writes it beside the splits)")
    names = class_names(cfg)
    for split in splits:
        check_split_labels(cfg, split)
    for split in splits:    # a process reads them all at once: refused here, not at a first step
        split_shards(split_dir(cfg, split))
    return names


def check_split_labels(cfg: Config, split: str) -> None:
    """Refuse a split converted with another label file than the one read as its class names."""
    problem = split_labels_problem(split_dir(cfg, split), labels_path(cfg))
    if problem:
        raise ValueError(problem)


def split_name(cfg: Config, split: str) -> str:
    """The folder name of ``split``: the roles ``train``/``val`` name the config's
    ``data.train_split``/``data.val_split``; any other name is a folder itself. The one place a
    split is resolved: a name resolved twice would turn swapped names back."""
    return cfg.data[f"{split}_split"] if split in SPLIT_KEYS else split


def split_dir(cfg: Config, split: str) -> Path:
    """The folder of ``split`` (``split_name``) under ``data.root``."""
    path = Path(cfg.data.root) / split_name(cfg, split)
    if not path.is_dir():
        raise FileNotFoundError(f"split folder not found: {path} (data.root={cfg.data.root!r}, "
                                f"split={split!r})")
    return path


def _padded_sample() -> dict:
    """A row of every read column that EvalClips recognizes as padding (num_frames 0), with the
    checksum a converter would write for it: padding passes the check every row gets."""
    blob, offsets, label, video_id = b"\x00", np.zeros(1, np.int64), -1, ""
    return {FRAMES: blob, OFFSETS: offsets, NUM_FRAMES: 0, LABEL: label, VIDEO_ID: video_id,
            CHECKSUM: sample_checksum(video_id, label, offsets, blob)}


def records(cfg: Config, split: str, *, training: bool, rank: int = 0, group_size: int = 1,
            epoch: int = 0) -> ds.MindDataset:
    """This rank's share of the split's raw records (one row per video), before decoding.

    Training: shuffled by a seed from ``(cfg.seed, epoch)``, the same on every rank, so the
    shards of one epoch cover the split (MindDataset repeats ``-count % group_size`` videos so
    every shard has the same length). Evaluation: in order, padded with ``num_frames == 0``
    rows so the ranks hold every video exactly once.
    """
    if not 0 <= rank < group_size:
        raise ValueError(f"rank must be in 0..{group_size - 1}, got {rank!r}")
    keep_large_buffers()    # before the first dataset thread takes an arena of its own
    check_split_labels(cfg, split)
    folder = split_dir(cfg, split)
    shards = split_shards(folder)
    if not shards:
        raise FileNotFoundError(f"no converted videos in {folder}")
    # MindDataset's shuffle seed is global; it must be the same on every rank (docs/design.md §4).
    ds.config.set_seed(int(np.random.SeedSequence([cfg.seed, epoch]).generate_state(1)[0]))
    sharding = {"num_shards": group_size, "shard_id": rank} if group_size > 1 else {}
    if training:
        return ds.MindDataset(shards, columns_list=_READ_COLUMNS, shuffle=True, **sharding)
    count = ds.MindDataset(shards, columns_list=[NUM_FRAMES], shuffle=False).get_dataset_size()
    num_padded = -count % group_size
    padding = {"padded_sample": _padded_sample(), "num_padded": num_padded} if num_padded else {}
    return ds.MindDataset(shards, columns_list=_READ_COLUMNS, shuffle=False, **sharding, **padding)


def _log_once(message: str, *args) -> None:
    """Datasets are built per epoch and per split; a setting worth knowing is logged once."""
    text = message % args
    if text not in _LOGGED:
        _LOGGED.add(text)
        logger.info(text)


def clip_decoder(cfg: Config, split: str, crop: int, normalize: bool = False) -> ClipDecoder:
    """The decoder for a split, from the conversion settings stored in its manifest."""
    folder = split_dir(cfg, split)
    zoo = cfg.data.resize == "zoo"      # the only mode that looks at the sources' sizes
    table = read_manifest(folder, SOURCE_SIZE_COLUMNS if zoo else [])
    settings = read_settings(table)
    stored = settings.short_side if settings else None
    if stored is not None and 0 < stored < crop:    # every clip would be upscaled from too few pixels
        raise ValueError(f"{folder} is stored at short side {stored}, below the crop {crop}: "
                         f"reconvert it with datatools.convert --short-side {crop} or more, or lower "
                         f"data.crop_size / test.crop")
    return build_decoder(cfg, stored, crop, normalize, source_sizes(table) if zoo else {}, folder,
                         codec_of(settings))


def build_decoder(cfg: Config, stored: int | None, crop: int, normalize: bool,
                  sizes: dict[str, tuple[int, int]], where: str | Path, codec: str = JPEG,
                  actual: int | None = None) -> ClipDecoder:
    """The decoder for ``codec`` frames converted at short side ``stored`` (None: unknown) from
    sources of ``sizes`` ((height, width) by video_id); ``where`` names them in messages, with
    ``actual`` their own short side where it is known to differ (a source smaller than ``stored``
    is kept at its size).

    ``data.short_side: 0`` reads frames at the converted short side; another value rescales them
    at read time, which is said once. ``data.resize=zoo`` keeps the videos whose source short side
    is already the target at their source size.
    """
    if cfg.data.resize not in RESIZE_MODES:
        raise ConfigError(f"data.resize must be one of {'|'.join(RESIZE_MODES)}, got {cfg.data.resize!r}")
    short = cfg.data.short_side or stored
    if not short:
        raise ValueError(f"data.short_side=0 reads frames as stored, but {where} was converted "
                         f"at their source size (--short-side 0): set data.short_side")
    if cfg.data.resize == "zoo":
        _log_once("%s: data.resize=zoo: frames of sources whose short side is not %d are squashed "
                  "to %dx%d as the model zoo does (stored at short side %s)", where, short,
                  int(short * 4 / 3), short, stored)
        kept = {vid: size for vid, size in sizes.items() if min(size) == short}
        return ClipDecoder(short, crop, normalize, resize="zoo", source_sizes=kept, codec=codec)
    shown = actual or stored
    if shown != short:
        _log_once("%s is stored at short side %s; frames are scaled to short side %d at read time (%s)",
                  where, shown, short, f"data.short_side={short}" if cfg.data.short_side
                  else f"data.short_side=0: the records' {stored}")
    return ClipDecoder(short, crop, normalize, codec=codec)


def views_per_video(cfg: Config) -> int:
    """Views a test protocol scores per video: ``test.clips`` × ``test.crops``."""
    return cfg.test.clips * cfg.test.crops


def eval_clips(cfg: Config, decoder: ClipDecoder, folder: str | Path) -> EvalClips:
    """The config's test protocol (segments, clips, crops) over ``decoder``'s frames."""
    sampler = ClipSampler(cfg.test.segments, cfg.data.frames_per_segment)
    return EvalClips(sampler, decoder, cfg.test.clips, folder, cfg.test.crops)


def create_dataset(cfg: Config, split: str, *, training: bool, rank: int = 0, group_size: int = 1,
                   epoch: int = 0, normalize: bool = False) -> ds.Dataset:
    """Batched clips of one split, sharded over ``group_size`` ranks.

    Parameters
    ----------
    cfg : Config
        Reads ``seed``, ``data.*`` and ``test.*``.
    split : str
        ``train`` or ``val`` (resolved through ``data.train_split``/``data.val_split``), or a
        folder name under ``data.root``.
    training : bool
        True: shuffled (seed from (seed, epoch), same on every rank), random crop/flip,
        ``data.batch_size`` with ``drop_remainder``; columns ``clip`` (B, *clip) with the
        ``ClipDecoder.clip_shape`` (uint8 (T, N, crop, crop, 3) pixels by default), ``label`` (B,) int32 (``IGNORE_LABEL`` for a bad sample) and ``problem`` (str,
        "" for a sound sample). When the video count is not divisible by ``group_size``,
        MindDataset repeats a few videos so every shard has ceil(count / group_size) rows.
        False: in order, K clips × C crops (``test.clips``, ``test.crops``), ``test.batch_size``,
        last batch kept; padded with masked rows so every video is seen exactly once over all
        ranks; columns ``clip`` (B, K·C, *clip), ``label``, ``mask`` (int32, 0 for padding and
        bad samples), ``video_id`` (str), ``problem`` (str, "" for a sound sample).
    rank, group_size : int
        This rank's shard of the split.
    epoch : int
        Training epoch this dataset serves: build one dataset per epoch. The shuffle order and
        every augmentation draw derive from ``(seed, epoch)``, so a resumed run repeats the
        uninterrupted one exactly. Ignored for evaluation.
    normalize : bool
        False (default): uint8 pixels, normalized by the network (``trainer.precision.PixelInput``).
        True: float32 clips normalized on the host, as the model zoo's graph takes them.
    """
    data = records(cfg, split, training=training, rank=rank, group_size=group_size, epoch=epoch)
    workers = max(1, min(cfg.data.num_workers, os.cpu_count() or 1))
    if training:
        sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
        op = TrainClips(sampler, clip_decoder(cfg, split, cfg.data.crop_size, normalize), cfg.seed, epoch)
        columns, batch_size = [CLIP, LABEL, PROBLEM], cfg.data.batch_size
    else:
        op = eval_clips(cfg, clip_decoder(cfg, split, cfg.test.crop, normalize), split_dir(cfg, split))
        columns, batch_size = [CLIP, LABEL, MASK, VIDEO_ID, PROBLEM], cfg.test.batch_size
    logger.info("%s split %s: rank %d/%d, %r", "train" if training else "eval", split, rank,
                group_size, op)
    data = data.map(op, input_columns=_READ_COLUMNS, output_columns=columns,
                    num_parallel_workers=workers, python_multiprocessing=False)
    data = data.project(columns).batch(batch_size, drop_remainder=training)
    limit = _quick_check_batches(cfg, training, group_size)
    return data.take(limit) if limit else data


def _quick_check_batches(cfg: Config, training: bool, group_size: int = 1) -> int:
    """Batches a quick check of a config keeps per rank (0: all, the default): the first
    ``train.limit_steps`` of every epoch, or the batches that hold ``test.limit_videos`` videos
    over all ranks (every rank the same count, as the collectives need)."""
    if training:
        limit = cfg.train.limit_steps
    else:
        limit = math.ceil(cfg.test.limit_videos / (cfg.test.batch_size * group_size))
    if limit:
        _log_once("quick check: %s", f"every epoch stops after {limit} steps (train.limit_steps)" if training
                  else f"evaluation reads {limit} batch(es) per rank, up to "
                       f"{limit * cfg.test.batch_size * group_size} videos (test.limit_videos)")
    return limit
