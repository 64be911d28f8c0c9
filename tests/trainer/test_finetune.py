"""Fine-tuning: train.head_lr_mult steps the classifier at a multiple of the schedule, only it;
the demo model fine-tunes to another class count."""
from __future__ import annotations

import logging

import mindspore as ms
import numpy as np

from datatools.convert import convert
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import Settings
from datatools.schema import LABELS_NAME
from datatools.synth import SynthSpec, make_dataset
from trainer.config import load_config
from trainer.train import train
from trainer.train_step import build_train_cell, run_step

from tests.trainer.test_config import DEMO
from tests.trainer.test_train_step import SETTINGS, ShallowStNet, _batch

LR = np.full(4, 0.05, np.float32)


def _updates(mult: float) -> dict[str, np.ndarray]:
    cfg = load_config(DEMO, [*SETTINGS, "train.amp_level=O0", f"train.head_lr_mult={mult}"])
    ms.set_seed(0)
    net = ShallowStNet()
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    run_step(build_train_cell(net, cfg, LR), *_batch())
    return {p.name: p.asnumpy() - before[p.name] for p in net.trainable_params()}


def test_head_lr_mult_scales_the_classifier_update_only():
    plain, boosted = _updates(1.0), _updates(10.0)
    for name in plain:
        ratio = np.linalg.norm(boosted[name]) / max(np.linalg.norm(plain[name]), 1e-30)
        expected = 10.0 if name.startswith("fc.") else 1.0
        assert abs(ratio - expected) < 1e-3 * expected, (name, ratio)


def test_the_demo_model_fine_tunes_from_4_to_2_classes(learned_run, tmp_path):
    """The 4-class demo checkpoint as model.pretrained of a 2-class set: the classifier is named
    as freshly initialised, the rest loaded, and the fine-tuning run trains and saves."""
    source = tmp_path / "source"
    train_csv, val_csv = make_dataset(source, 2, 4, 2, seed=5, spec=SynthSpec(num_frames=16, width=96, height=64))
    root = tmp_path / "records"
    labels = write_labels(class_names(e.label for e in read_csv(train_csv)), root / LABELS_NAME)
    settings = Settings(short_side=64, quality=90, max_fps=None, videos_per_shard=8, seed=0,
                        page_size=1 << 20)
    for split, csv_path in (("train", train_csv), ("val", val_csv)):
        convert(csv_path, source / "videos", labels, root / split, settings, workers=1)
    cfg = load_config(DEMO, [f"data.root={root}", f"train.output_dir={tmp_path / 'runs'}", "name=two",
                             "model.num_classes=2", f"model.pretrained={learned_run.run_dir / 'best.ckpt'}",
                             "train.head_lr_mult=10.0", "train.epochs=1", "train.warmup_epochs=0",
                             "data.batch_size=4", "train.eval_interval=1"])
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("trainer.pretrained").addHandler(handler)
    try:
        metrics = train(cfg)
    finally:
        logging.getLogger("trainer.pretrained").removeHandler(handler)
    assert sum("classifier fc.bias, fc.weight freshly initialised: the checkpoint classifies 4 "
               "classes, the network 2" in m for m in messages) == 1, messages
    assert metrics["videos"] == 4
    best = ms.load_checkpoint(str(tmp_path / "runs" / "two" / "best.ckpt"))
    assert best["fc.weight"].shape[0] == 2
    tuned = best["layer1.0.conv1.weight"].asnumpy()
    pretrained = ms.load_checkpoint(str(learned_run.run_dir / "best.ckpt"))["layer1.0.conv1.weight"].asnumpy()
    assert np.abs(tuned - pretrained).max() < 0.1 * np.abs(pretrained).max()   # started from it
