"""Clip sampler and decoder on numpy data; the loader on real converted records (tiny_records)."""
from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import simplejpeg

from datatools.labels import write_labels
from datatools.manifest import MANIFEST_NAME, META_SETTINGS, read_rows
from datatools.schema import LABEL, LABELS_NAME, VIDEO_ID, pack_frames, read_labels, sample_checksum
from trainer.config import load_config
from trainer.data import (CLIP, IGNORE_LABEL, MASK, MEAN, PROBLEM, STD, BadSample, ClipDecoder,
                          ClipSampler, EvalClips, TrainClips, create_dataset, records)
from trainer.rundir import RunDir
from trainer.train import train

from tests.trainer.test_train import TINY

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


# ---- sampler -------------------------------------------------------------------------------

def test_sampler_exact_video_takes_every_frame_once():
    sampler = ClipSampler(4, 3)
    expected = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(sampler.train_indices(12, np.random.default_rng(0)), expected)
    np.testing.assert_array_equal(sampler.test_indices(12), expected[None])


def test_sampler_long_video_stays_inside_segments():
    sampler = ClipSampler(4, 3)  # 100 frames: segments of 25, runs of 3
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = sampler.train_indices(100, rng)
        assert idx.shape == (4, 3) and idx.dtype == np.int64
        np.testing.assert_array_equal(np.diff(idx, axis=1), 1)
        offsets = idx[:, 0] - np.arange(4) * 25
        assert ((offsets >= 0) & (offsets <= 22)).all()
        starts.update(offsets.tolist())
    assert starts == set(range(23))  # every legal offset drawn, none outside
    np.testing.assert_array_equal(sampler.test_indices(100)[0, :, 0], 11 + np.arange(4) * 25)


def test_sampler_short_videos_wrap():
    sampler = ClipSampler(4, 3)
    # 5 frames: segments of 1 frame, runs start at the segment and wrap past the end.
    np.testing.assert_array_equal(sampler.test_indices(5)[0],
                                  [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]])
    # 2 frames: shorter than T, segment i starts at frame i (mod 2).
    idx = sampler.train_indices(2, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, [[0, 1, 0], [1, 0, 1], [0, 1, 0], [1, 0, 1]])
    for num_frames in (1, 3, 7, 11):
        assert sampler.train_indices(num_frames, np.random.default_rng(1)).max() < num_frames


def test_sampler_multi_clip_spreads_offsets_and_k1_is_centred():
    sampler = ClipSampler(2, 2)  # 42 frames: segments of 21, free range 0..19
    clips = sampler.test_indices(42, num_clips=3)
    assert clips.shape == (3, 2, 2)
    np.testing.assert_array_equal(clips[:, 0, 0], [3, 9, 15])
    np.testing.assert_array_equal(sampler.test_indices(42, 1)[0, :, 0], [9, 30])


def test_sampler_is_deterministic_per_seed():
    sampler = ClipSampler(7, 5)
    a = [sampler.train_indices(300, np.random.default_rng(5)) for _ in range(2)]
    b = sampler.train_indices(300, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


@pytest.mark.parametrize("args", [(0, 5), (7, 0), (7.0, 5)])
def test_sampler_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="must be an integer"):
        ClipSampler(*args)


def test_sampler_rejects_empty_video_and_repr():
    sampler = ClipSampler(7, 5)
    with pytest.raises(ValueError, match="num_frames"):
        sampler.test_indices(0)
    assert repr(sampler) == "ClipSampler(num_segments=7, frames_per_segment=5)"


# ---- decoder -------------------------------------------------------------------------------

def _video(levels: list[int], height: int, width: int) -> tuple[memoryview, np.ndarray]:
    """JPEG frames of one grey level each, with a bright left column to see flips."""
    jpegs = []
    for level in levels:
        image = np.full((height, width, 3), level, np.uint8)
        image[:, :8] = 255
        jpegs.append(simplejpeg.encode_jpeg(image, quality=95))
    blob, offsets = pack_frames(jpegs)
    return memoryview(blob), offsets


def test_decoder_shape_channel_order_and_normalization():
    levels = [20, 60, 100, 140, 180, 220]
    blob, offsets = _video(levels, 64, 80)
    decoder = ClipDecoder(short_side=64, crop=32, normalize=True)
    indices = np.arange(6).reshape(1, 2, 3)  # one clip of T=2 segments of N=3 frames
    clip = decoder.views(blob, offsets, indices, [(16, 40)], flip=False)[0]
    assert clip.shape == (2, 9, 32, 32) and clip.dtype == np.float32
    expected = [(level / 255 - np.asarray(MEAN)) / np.asarray(STD) for level in levels]
    got = clip.reshape(2, 3, 3, 32, 32).mean(axis=(3, 4)).reshape(6, 3)
    np.testing.assert_allclose(got, expected, atol=0.03)


def _textured_video(count: int, height: int, width: int) -> tuple[memoryview, np.ndarray]:
    """JPEG frames of noise, so that every crop position and flip gives other pixels."""
    rng = np.random.default_rng(7)
    blob, offsets = pack_frames([simplejpeg.encode_jpeg(rng.integers(0, 256, (height, width, 3), np.uint8),
                                                        quality=90) for _ in range(count)])
    return memoryview(blob), offsets


def _reference_views(blob, offsets, indices, boxes, flip, crop, scale_to=None) -> np.ndarray:
    """The loader's clips as the earlier loader made them: every sampled frame decoded on its
    own (fast DCT and upsampling, as data.resize=keep does), scaled with cv2 if asked, cropped,
    mirrored by slicing; uint8 (K·C, T, N, crop, crop, 3)."""
    import cv2
    clips, t, n = indices.shape
    frames = [simplejpeg.decode_jpeg(bytes(blob[offsets[i]:offsets[i + 1]]), fastdct=True, fastupsample=True)
              for i in indices.ravel()]
    if scale_to:
        frames = [cv2.resize(f, scale_to[::-1], interpolation=cv2.INTER_LINEAR) for f in frames]
    views = []
    for k in range(clips):
        for top, left in boxes:
            crops = [f[top:top + crop, left:left + crop] for f in frames[k * t * n:(k + 1) * t * n]]
            views.append(np.stack([c[:, ::-1] if flip else c for c in crops]).reshape(t, n, crop, crop, 3))
    return np.stack(views)


@pytest.mark.parametrize("flip", [False, True])
def test_decoder_views_equal_the_earlier_loader_bit_for_bit(flip):
    """Decoding into a reused buffer and cropping on the way out changes no pixel: views equal
    per-frame decodes cropped by slicing, with repeated frames, several clips and boxes."""
    blob, offsets = _textured_video(9, 64, 85)
    indices = np.array([[[0, 1], [4, 4]], [[2, 3], [8, 0]]])      # K=2, T=2, N=2; 4 and 0 repeat
    boxes = [(4, 0), (4, 14), (0, 29)]
    decoder = ClipDecoder(64, 56)
    got = decoder.views(blob, offsets, indices, boxes, flip)
    assert got.shape == (6, 2, 2, 56, 56, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _reference_views(blob, offsets, indices, boxes, flip, 56))
    scaled = ClipDecoder(96, 80).views(blob, offsets, indices, [(8, 30)], flip)   # 64x85 -> 96x128
    np.testing.assert_array_equal(scaled, _reference_views(blob, offsets, indices, [(8, 30)], flip, 80,
                                                           scale_to=(96, 128)))


def test_pixels_normalized_by_the_network_equal_the_host_normalization():
    """The loader's uint8 pixels through PixelInput give the host-normalized clip of the same
    frames (to float32 rounding): moving normalization to the device changes no input."""
    import mindspore as ms
    from mindspore import nn

    from trainer.precision import PixelInput

    blob, offsets = _textured_video(6, 64, 85)
    indices = np.arange(6).reshape(1, 2, 3)
    pixels = ClipDecoder(64, 56).views(blob, offsets, indices, [(3, 7)], flip=True)[0]
    assert pixels.shape == (2, 3, 56, 56, 3) and pixels.dtype == np.uint8
    frame = simplejpeg.decode_jpeg(bytes(blob[offsets[5]:offsets[6]]), fastdct=True, fastupsample=True)
    np.testing.assert_array_equal(pixels[1, 2], frame[3:59, 7:63][:, ::-1])   # crop, flip
    host = ClipDecoder(64, 56, normalize=True).views(blob, offsets, indices, [(3, 7)], flip=True)[0]
    device = PixelInput(nn.Identity())(ms.Tensor(pixels[None])).asnumpy()[0]
    assert device.shape == host.shape == (2, 9, 56, 56)
    np.testing.assert_allclose(device, host, rtol=0, atol=1e-6)


def test_decoder_flip_mirrors_and_rescales_short_side():
    blob, offsets = _video([50], 48, 60)  # stored below the short side: scaled 48 -> 96 (×2)
    decoder = ClipDecoder(short_side=96, crop=96)
    assert decoder.frame_size(blob, offsets, 0) == (96, 120)
    one = np.zeros((1, 1, 1), np.int64)
    plain = decoder.views(blob, offsets, one, [(0, 0)], flip=False)[0]     # (T, N, H, W, 3) pixels
    flipped = decoder.views(blob, offsets, one, [(0, 0)], flip=True)[0]
    np.testing.assert_array_equal(flipped, plain[:, :, :, ::-1])
    assert plain[0, 0, :, :10].mean() > plain[0, 0, :, -10:].mean() + 1  # bright column left


def test_decoder_refuses_a_frame_of_another_size():
    small, large = _video([50], 64, 80), _video([90], 64, 100)
    blob, offsets = pack_frames([bytes(small[0]), bytes(large[0])])
    with pytest.raises(BadSample, match="frame 1 is 100x64, frame 0 80x64"):
        ClipDecoder(64, 32).views(memoryview(blob), offsets, np.array([[[0, 1]]]), [(0, 0)], False)


def test_decoder_rejects_crop_larger_than_short_side():
    with pytest.raises(ValueError, match="crop must be in 1..short_side=112, got 128"):
        ClipDecoder(short_side=112, crop=128)


# ---- map ops on altered samples -----------------------------------------------------------

def _sample(video_id: str = "v1", label: int = 2, broken_frame: int | None = None) -> tuple:
    """A map op's input row (frames, offsets, num_frames, label, video_id, checksum) of 4 frames,
    its checksum computed over whatever the frames are (as the converter writes it)."""
    blob, offsets = _video([40, 80, 120, 160], 64, 80)
    blob = bytearray(blob)
    if broken_frame is not None:
        blob[int(offsets[broken_frame]) + 20] ^= 0xFF   # a header byte: the JPEG cannot decode
    frames = np.frombuffer(bytes(blob), "S1")
    return (frames, offsets, np.int32(4), np.int32(label), np.array(video_id),
            np.int64(sample_checksum(video_id, label, offsets, bytes(blob))))


def _ops() -> tuple[TrainClips, EvalClips]:
    sampler, decoder = ClipSampler(2, 2), ClipDecoder(64, 32)   # 4 frames: every frame is used
    return TrainClips(sampler, decoder, seed=0, epoch=0), EvalClips(sampler, decoder, 1, "records/x/val")


def test_map_ops_pass_a_sound_sample():
    train_op, eval_op = _ops()
    clip, label, problem = train_op(*_sample())
    assert clip.shape == (2, 2, 32, 32, 3) and clip.any() and label == 2 and problem == ""
    clip, label, mask, video_id, problem = eval_op(*_sample())
    assert clip.shape == (1, 2, 2, 32, 32, 3) and (label, mask, str(video_id), problem) == (2, 1, "v1", "")


@pytest.mark.parametrize("column, value, reason", [
    (3, np.int32(3), "checksum mismatch"),            # label: not the one written
    (4, np.array("v2"), "checksum mismatch"),         # video_id
    (2, np.int32(5), "num_frames 5 but 4 frames"),    # num_frames: outside the checksum
])
def test_map_ops_flag_a_sample_that_differs_from_its_checksum(column, value, reason):
    row = list(_sample())
    row[column] = value
    train_op, eval_op = _ops()
    clip, label, problem = train_op(*row)
    video = str(row[4])
    assert not clip.any() and label == IGNORE_LABEL and problem == f"video {video}: {reason}"
    clip, label, mask, _, problem = eval_op(*row)
    assert not clip.any() and mask == 0
    assert problem == (f"video {video}: {reason}: metrics are not computed on altered data; run "
                       f"datatools.inspect records/x/val")


def test_map_ops_flag_a_frame_that_does_not_decode():
    """The checksum matches (the converter wrote these bytes) but frame 2 is not a JPEG."""
    train_op, eval_op = _ops()
    clip, label, problem = train_op(*_sample(broken_frame=2))
    assert not clip.any() and label == IGNORE_LABEL
    assert problem.startswith("video v1: frame 2 does not decode (Corrupt JPEG data")
    assert eval_op(*_sample(broken_frame=2))[-1].startswith("video v1: frame 2 does not decode (")


def test_training_batches_flag_altered_videos_and_keep_the_rest(altered_records):
    cfg = load_config(DEMO, [f"data.root={altered_records}", "data.num_workers=2"])
    flagged, labels = [], 0
    for batch in _batches(create_dataset(cfg, "train", training=True, epoch=0)):
        bad = batch[PROBLEM] != ""
        flagged.extend(str(p) for p in batch[PROBLEM][bad])
        assert (batch[LABEL][bad] == IGNORE_LABEL).all() and not batch[CLIP][bad].any()
        assert (batch[LABEL][~bad] >= 0).all() and all(c.any() for c in batch[CLIP][~bad])
        labels += int((~bad).sum())
    assert sorted(flagged) == sorted(f"video {v}: checksum mismatch" for v in
                                     (altered_records.frame_flipped, altered_records.label_changed))
    assert labels == len(_ok_ids(cfg, "train")) - 2


# ---- loader on converted records -------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg(tiny_records):
    return load_config(DEMO, [f"data.root={tiny_records}", "data.num_workers=2"])


def _ok_ids(cfg, split: str) -> list[str]:
    return [row.video_id for row in read_rows(Path(cfg.data.root) / split) if row.ok]


def _batches(dataset) -> list[dict]:
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def test_training_batches_shape_and_dtype(cfg):
    dataset = create_dataset(cfg, "train", training=True, epoch=0)
    videos = len(_ok_ids(cfg, cfg.data.train_split))
    assert dataset.get_dataset_size() == videos // cfg.data.batch_size
    batches = _batches(dataset)
    assert len(batches) == videos // cfg.data.batch_size
    clip = batches[0][CLIP]
    t, n, c = cfg.data.num_segments, cfg.data.frames_per_segment, cfg.data.crop_size
    assert clip.shape == (cfg.data.batch_size, t, n, c, c, 3) and clip.dtype == np.uint8
    assert batches[0][LABEL].dtype == np.int32
    assert clip.min() < 50 and clip.max() > 200      # pixels, not normalized values


def test_training_is_deterministic_per_seed_and_epoch(cfg):
    def first_batch(config, epoch):
        return _batches(create_dataset(config, "train", training=True, epoch=epoch))[0]

    a, b = first_batch(cfg, 0), first_batch(cfg, 0)
    np.testing.assert_array_equal(a[CLIP], b[CLIP])
    np.testing.assert_array_equal(a[LABEL], b[LABEL])
    assert not np.array_equal(a[CLIP], first_batch(cfg, 1)[CLIP])
    other_seed = load_config(DEMO, [f"data.root={cfg.data.root}", "seed=2"])
    assert not np.array_equal(a[CLIP], first_batch(other_seed, 0)[CLIP])


def test_eight_training_shards_partition_the_split(cfg):
    ids = _ok_ids(cfg, cfg.data.train_split)
    group = 8
    for epoch in (0, 1):
        seen = Counter()
        orders = []
        for rank in range(group):
            rows = _batches(records(cfg, "train", training=True, rank=rank, group_size=group,
                                    epoch=epoch))
            assert len(rows) == -(-len(ids) // group)
            orders.extend(str(r[VIDEO_ID]) for r in rows)
            seen.update(str(r[VIDEO_ID]) for r in rows)
        assert set(seen) == set(ids)
        # MindDataset's rule when the count is not divisible: repeat just enough videos.
        assert sum(seen.values()) - len(ids) == -len(ids) % group
        if epoch == 0:
            first_order = orders
    assert orders != first_order  # reshuffled for the next epoch


def test_eval_ranks_see_every_video_exactly_once(cfg):
    ids = _ok_ids(cfg, cfg.data.val_split)
    group = 8
    assert len(ids) % group, "the tiny val split should not divide by 8 to exercise padding"
    seen, pads, sizes = Counter(), 0, set()
    for rank in range(group):
        batches = _batches(create_dataset(cfg, "val", training=False, rank=rank, group_size=group))
        sizes.add(sum(len(b[MASK]) for b in batches))
        for b in batches:
            real = b[MASK].astype(bool)
            seen.update(str(v) for v in b[VIDEO_ID][real])
            pads += int((~real).sum())
            assert (b[CLIP][~real] == 0).all()
    assert seen == Counter(ids)
    assert pads == -len(ids) % group and len(sizes) == 1  # same number of rows on every rank


def test_eval_multi_clip_shape_and_centre_crop_is_deterministic(cfg):
    multi = load_config(DEMO, [f"data.root={cfg.data.root}", "test.clips=2", "test.segments=3"])
    a, b = (_batches(create_dataset(multi, "val", training=False))[0] for _ in range(2))
    s, n = multi.test.crop, multi.data.frames_per_segment
    assert a[CLIP].shape == (len(a[MASK]), 2, 3, n, s, s, 3)
    np.testing.assert_array_equal(a[CLIP], b[CLIP])
    assert a[MASK].all()


def test_split_must_exist(cfg):
    with pytest.raises(FileNotFoundError, match="split folder not found"):
        create_dataset(cfg, "nope", training=False)
    with pytest.raises(ValueError, match="rank must be in 0..7"):
        create_dataset(cfg, "val", training=False, rank=8, group_size=8)


# ---- cross-file facts: label file <-> manifest <-> num_classes, split name <-> folder -----------

def _run_config(root, out, *overrides):
    return load_config(DEMO, [f"data.root={root}", f"train.output_dir={out}", "name=run", *TINY,
                              "train.epochs=1", *overrides])


def _no_step_taken(out: Path) -> bool:
    run = RunDir(out / "run")
    return not run.log.exists() and not run.epoch_checkpoints()


def test_training_refuses_a_label_file_of_another_class_count_before_any_step(tiny_records, tmp_path):
    """UCF101 records with the Kinetics recipe trained a 400-way head without a word."""
    message = (f"{tiny_records.labels} has 4 classes but model.num_classes=5: set "
               f"model.num_classes=4, or data.root to the records the model is for")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        train(_run_config(tiny_records, tmp_path, "model.num_classes=5"))
    assert _no_step_taken(tmp_path)


def _relabelled_root(tiny_records, base: Path) -> Path:
    """tiny_records' splits under a label file with the same names at other indices."""
    root = base / "records"
    for split in ("train", "val"):
        (root / split).parent.mkdir(parents=True, exist_ok=True)
        (root / split).symlink_to(tiny_records.split(split))
    write_labels(read_labels(tiny_records.labels)[::-1], root / LABELS_NAME)
    return root


def test_a_split_converted_with_another_label_file_is_refused(tiny_records, tmp_path):
    root = _relabelled_root(tiny_records, tmp_path)
    cfg = load_config(DEMO, [f"data.root={root}"])
    for split, call in (("val", lambda: create_dataset(cfg, "val", training=False)),
                        ("train", lambda: create_dataset(cfg, "train", training=True))):
        with pytest.raises(ValueError, match=f"^{re.escape(str(root / split))} was converted with "
                                             f"another label file than "
                                             f"{re.escape(str(root / LABELS_NAME))} "):
            call()


def test_training_checks_the_val_split_label_file_before_any_step(tiny_records, tmp_path):
    """The val split is first read after an epoch: its label file is checked at the start."""
    root = tmp_path / "records"
    root.mkdir()
    (root / LABELS_NAME).write_bytes(tiny_records.labels.read_bytes())
    (root / "train").symlink_to(tiny_records.split("train"))
    subprocess.run(["cp", "-r", "--sparse=always", str(tiny_records.split("val")), str(root)], check=True)
    manifest = root / "val" / MANIFEST_NAME     # as a conversion with another labels.txt writes it
    table = pq.read_table(manifest)
    meta = dict(table.schema.metadata)
    meta[META_SETTINGS] = json.dumps({**json.loads(meta[META_SETTINGS]), "labels_sha256": "0" * 64}).encode()
    pq.write_table(table.replace_schema_metadata(meta), manifest)
    with pytest.raises(ValueError, match=f"^{re.escape(str(root / 'val'))} was converted with another "
                                         f"label file than {re.escape(str(root / LABELS_NAME))} "):
        train(_run_config(root, tmp_path / "runs"))
    assert _no_step_taken(tmp_path / "runs")


@pytest.mark.slow   # one tiny epoch
def test_swapped_split_names_train_on_val_and_evaluate_on_train(tiny_records, tmp_path):
    """Each name is resolved once: data.train_split=val trains on the val folder."""
    cfg = _run_config(tiny_records, tmp_path, "data.train_split=val", "data.val_split=train",
                      "model.width=4")
    metrics = train(cfg)
    windows, _ = RunDir(tmp_path / "run").read_log()
    val_videos, train_videos = (len(_ok_ids(cfg, split)) for split in ("val", "train"))
    assert windows[-1]["step"] == val_videos // cfg.data.batch_size
    assert metrics["videos"] == train_videos != val_videos
