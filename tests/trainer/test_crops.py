"""The 3-crop test protocol: where the crops sit, and that trainer.eval scores a video by the mean
of three single-crop evaluations computed here by hand."""
from __future__ import annotations

from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore.mindrecord import FileReader

from datatools.manifest import ok_shard_paths
from datatools.schema import FRAMES, NUM_FRAMES, OFFSETS, VIDEO_ID
from trainer.config import ConfigError, load_config
from trainer.data import ClipDecoder, ClipSampler, clip_decoder, create_dataset, split_dir
from trainer.eval import evaluate
from trainer.model import create_model
from trainer.precision import PixelInput
from trainer.runtime import init_runtime

from tests.trainer.test_eval import _softmax

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def test_three_crops_run_along_the_long_side():
    decoder = ClipDecoder(64, 56)
    assert decoder.test_boxes(64, 85, 1) == [(4, 14)]
    assert decoder.test_boxes(64, 85, 3) == [(4, 0), (4, 14), (4, 29)]      # left, centre, right
    assert decoder.test_boxes(85, 64, 3) == [(0, 4), (14, 4), (29, 4)]      # top, centre, bottom
    with pytest.raises(ValueError, match="test.crops must be one of 1|3, got 2"):
        decoder.test_boxes(64, 85, 2)
    with pytest.raises(ConfigError, match="test.crops must be one of 1|3, got 2"):
        load_config(DEMO, ["test.crops=2"])


def _single_crop_views(cfg, blob: bytes, offsets: np.ndarray, num_frames: int,
                       video_id: str) -> np.ndarray:
    """(3 crop positions: left, centre, right; K clips; *clip) pixels of one video, cut by hand."""
    t, n, crop = cfg.test.segments, cfg.data.frames_per_segment, cfg.test.crop
    decoder = clip_decoder(cfg, "val", crop)
    indices = ClipSampler(t, n).test_indices(num_frames, cfg.test.clips)
    height, width = decoder.frame_size(memoryview(blob), offsets, int(indices.flat[0]), video_id)
    assert width > height    # the tiny records are landscape (85x64)
    top = (height - crop) // 2
    return np.stack([decoder.views(memoryview(blob), offsets, indices, [(top, left)], False, video_id)
                     for left in (0, (width - crop) // 2, width - crop)])


def test_three_crop_eval_is_the_mean_of_three_single_crop_evals(tiny_records):
    cfg = load_config(DEMO, [f"data.root={tiny_records}", "model.width=4", "mode=pynative",
                             "test.crops=3", "test.clips=2", "test.segments=2", "data.num_workers=1"])
    init_runtime(cfg)
    ms.set_seed(5)
    net = create_model(cfg)
    net.set_train(False)
    # A fresh network's features reach ~1e3 (BatchNorm's running statistics are still 0 and 1),
    # so its softmax is one-hot whatever the crop; small classifier weights keep the scores soft
    # enough for each crop's pixels to show.
    weight = net.fc.weight
    weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 1e-4, weight.shape), weight.dtype))
    net = PixelInput(net)
    result = evaluate(net, create_dataset(cfg, "val", training=False), cfg.model.num_classes)
    assert result["videos"] == len(result["scores"]) == 12

    views = {}
    for shard in ok_shard_paths(split_dir(cfg, "val")):
        reader = FileReader(shard)
        try:
            for row in reader.get_next():
                video_id = str(row[VIDEO_ID])
                views[video_id] = _single_crop_views(cfg, row[FRAMES], row[OFFSETS],
                                                     int(row[NUM_FRAMES]), video_id)
        finally:
            reader.close()
    assert sorted(views) == sorted(result["scores"])
    # One network call for every clip (a clip's logits do not depend on its batch: test_model),
    # then per video and crop position the mean softmax over its K clips.
    stacked = np.stack(list(views.values()))                        # (videos, 3, K, *clip)
    logits = net(ms.Tensor(stacked.reshape(-1, *stacked.shape[3:]))).asnumpy().astype(np.float64)
    by_crop = _softmax(logits.reshape(*stacked.shape[:3], -1)).mean(axis=2)   # (videos, 3, classes)
    for video_id, video_by_crop in zip(views, by_crop):
        np.testing.assert_allclose(result["scores"][video_id], video_by_crop.mean(axis=0),
                                   rtol=1e-5, atol=1e-6, err_msg=video_id)
    # the crops see different pixels: a centre-only eval would fail above
    assert np.abs(by_crop[:, 0] - by_crop[:, 2]).max() > 1e-3
