"""The loader on h264 records: the same videos converted twice (JPEG and h264) give the same
training and evaluation clips up to the codecs' loss; a damaged stream is a bad sample."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mindspore.dataset as ds
import numpy as np
import pytest

from datatools.convert import convert
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import H264, JPEG, Settings, ok_shard_paths
from datatools.schema import LABELS_NAME, pack_frames, sample_checksum
from datatools.synth import SynthSpec, make_dataset
from trainer.config import load_config
from trainer.data import (CLIP, IGNORE_LABEL, PROBLEM, ClipSampler, TrainClips, _READ_COLUMNS,
                          clip_decoder, create_dataset, eval_clips)

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
# Per-pixel noise (synth adds sigma 6 a frame) makes a neighbouring frame ~29 dB from a clip's own;
# crf 18 and q95 both keep the picture well above that, so a clip misread by a frame fails.
MIN_PSNR = 33.0


@dataclass(frozen=True)
class TwoCodecs:
    root: Path          # data.root: labels.txt, jpeg/ and h264/ hold the same videos


@pytest.fixture(scope="module")
def two_codecs(tmp_path_factory) -> TwoCodecs:
    """6 synthetic videos of 30 frames at 128x96 (kept: --short-side 0), as JPEG q95 and h264."""
    work = tmp_path_factory.mktemp("two_codecs")
    train_csv, _ = make_dataset(work / "src", 3, 2, 1, seed=4, spec=SynthSpec(30, 128, 96))
    root = work / "records"
    root.mkdir()
    write_labels(class_names(e.label for e in read_csv(train_csv)), root / LABELS_NAME)
    base = Settings(0, 95, None, videos_per_shard=3, seed=0, page_size=1 << 20)
    for codec in (JPEG, H264):
        settings = Settings(**{**base.to_dict(), "codec": codec})
        convert(train_csv, work / "src" / "videos", root / LABELS_NAME, root / codec, settings)
    return TwoCodecs(root)


def _cfg(root: Path, *overrides: str):
    return load_config(DEMO, [f"data.root={root}", "data.num_workers=2", "data.crop_size=64",
                              "test.crop=64", "model.num_classes=3", "data.short_side=96", *overrides])


def _rows(root: Path, split: str) -> dict[str, tuple]:
    """Each stored video's map op input row, by video id, read with MindDataset."""
    data = ds.MindDataset(ok_shard_paths(root / split), columns_list=_READ_COLUMNS, shuffle=False)
    return {str(row[4]): tuple(row) for row in data.create_tuple_iterator(num_epochs=1, output_numpy=True)}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_the_codec_comes_from_the_split_settings(two_codecs):
    cfg = _cfg(two_codecs.root)
    assert clip_decoder(cfg, JPEG, 64).frames.codec == JPEG
    assert clip_decoder(cfg, H264, 64).frames.codec == H264


def test_training_clips_match_the_jpeg_records(two_codecs):
    cfg = _cfg(two_codecs.root)
    jpeg, h264 = _rows(two_codecs.root, JPEG), _rows(two_codecs.root, H264)
    assert sorted(jpeg) == sorted(h264) and len(jpeg) == 6
    sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
    ops = {codec: TrainClips(sampler, clip_decoder(cfg, codec, 64), seed=3, epoch=1) for codec in (JPEG, H264)}
    for video_id in jpeg:
        a, label_a, problem_a = ops[JPEG](*jpeg[video_id])
        b, label_b, problem_b = ops[H264](*h264[video_id])
        assert (problem_a, problem_b) == ("", "") and label_a == label_b
        assert a.shape == b.shape == (4, 3, 64, 64, 3)
        assert _psnr(a, b) > MIN_PSNR, video_id
        shifted = np.concatenate([b[:, 1:], b[:, :1]], axis=1)     # the wrong frames of each segment
        assert _psnr(a, shifted) < MIN_PSNR


@pytest.mark.parametrize("overrides", [
    ("test.clips=1", "test.crops=1"),
    ("test.clips=2", "test.crops=3"),
    ("test.clips=2", "test.crops=3", "data.resize=zoo"),
    ("test.crops=3", "data.short_side=80"),       # scaled at read time: whole frames decoded
])
def test_eval_views_match_the_jpeg_records(two_codecs, overrides):
    cfg = _cfg(two_codecs.root, *overrides)
    views = {}
    for codec in (JPEG, H264):
        op = eval_clips(cfg, clip_decoder(cfg, codec, 64), two_codecs.root / codec)
        views[codec] = {vid: op(*row) for vid, row in _rows(two_codecs.root, codec).items()}
    for video_id, (a, label, mask, _, problem) in views[JPEG].items():
        b, label_b, mask_b, _, problem_b = views[H264][video_id]
        assert (problem, problem_b, int(mask), int(mask_b), int(label)) == ("", "", 1, 1, int(label_b))
        assert a.shape == b.shape == (cfg.test.clips * cfg.test.crops, 4, 3, 64, 64, 3)
        assert _psnr(a, b) > MIN_PSNR, video_id


def test_h264_training_batches_through_minddataset(two_codecs):
    cfg = _cfg(two_codecs.root, f"data.train_split={H264}", "data.batch_size=3")
    batches = list(create_dataset(cfg, "train", training=True).create_dict_iterator(num_epochs=1,
                                                                                     output_numpy=True))
    assert len(batches) == 2 and all((b[PROBLEM] == "").all() for b in batches)
    assert all(b[CLIP].shape == (3, 4, 3, 64, 64, 3) and b[CLIP].std() > 10 for b in batches)


def _truncated(row: tuple, frame: int) -> tuple:
    """``row`` with frame ``frame``'s packet cut in half and the checksum a converter would
    write for it: only decoding can tell."""
    blob, offsets, num_frames, label, video_id, _ = row
    blob = bytes(np.asarray(blob).tobytes())
    packets = [blob[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    packets[frame] = packets[frame][:len(packets[frame]) // 2]
    blob, offsets = pack_frames(packets)
    return (np.frombuffer(blob, "S1"), offsets, num_frames, label, video_id,
            np.int64(sample_checksum(str(video_id), int(label), offsets, blob)))


def test_a_stream_that_does_not_decode_is_a_bad_sample(two_codecs):
    cfg = _cfg(two_codecs.root, "test.clips=1")
    video_id, row = sorted(_rows(two_codecs.root, H264).items())[0]
    sampler = ClipSampler(cfg.data.num_segments, cfg.data.frames_per_segment)
    train_op = TrainClips(sampler, clip_decoder(cfg, H264, 64), seed=0, epoch=0)
    eval_op = eval_clips(cfg, clip_decoder(cfg, H264, 64), "records/x/h264")
    # the centred test clip reads frames 3..5, 10..12, 17..19, 24..26 of 30: frame 11 is in GOP 8..15
    bad = _truncated(row, 11)
    clip, label, problem = train_op(*bad)
    assert not clip.any() and label == IGNORE_LABEL
    assert problem.startswith(f"video {video_id}: h264 frames 8..") and "do not decode (Invalid data" in problem
    clip, label, mask, _, problem = eval_op(*bad)
    assert not clip.any() and mask == 0
    assert problem == (f"video {video_id}: h264 frames 8..11 do not decode (Invalid data found when "
                       f"processing input): metrics are not computed on altered data; run "
                       f"datatools.inspect records/x/h264")
    assert eval_op(*row)[-1] == "" and train_op(*row)[-1] == ""     # the intact row reads


def test_a_window_reads_from_the_whole_stream(two_codecs):
    """trainer.predict's windows: frames first..first+count-1 of the whole blob. For JPEG that is
    the earlier cut blob's views bit for bit; for h264 (a window starting mid-GOP, which a cut
    blob could not decode) the JPEG window's views up to the codecs' loss."""
    cfg = _cfg(two_codecs.root, "test.crops=3")
    first, count = 9, 14
    got = {}
    for codec in (JPEG, H264):
        op = eval_clips(cfg, clip_decoder(cfg, codec, 64), two_codecs.root / codec)
        blob, offsets = [sorted(_rows(two_codecs.root, codec).items())[0][1][i] for i in (0, 1)]
        blob = memoryview(np.asarray(blob).tobytes())
        got[codec] = op.views(blob, offsets, count, "", first)
        if codec == JPEG:
            part = offsets[first:first + count + 1]
            cut = op.views(blob[part[0]:part[-1]], part - part[0], count)
            np.testing.assert_array_equal(got[codec], cut)
    assert _psnr(got[JPEG], got[H264]) > MIN_PSNR
