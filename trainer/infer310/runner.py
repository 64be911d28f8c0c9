"""Run an exported MINDIR over the preprocessed clips, one result ``.bin`` per clip.

    python -m trainer.infer310.runner --model export/demo/310/stnet_b1.mindir --work export/demo/310 \
        [--device CPU|Ascend] [--device-id 0]

``--device Ascend`` (an Ascend 310/310P host) uses MindSpore Lite (``mindspore_lite``), the
inference API MindSpore ships for Ascend: NOT TESTED here (no Ascend device, no Lite wheel).
``--device CPU`` loads the same file with ``mindspore.load`` + ``nn.GraphCell``; that route runs
in the tests, so the file, the clips and the result layout are checked end to end. The clips'
dtype (uint8 pixels or normalized float32, ``clips.json``) must be the export's input dtype.
Imports only numpy and the stdlib at module level: ``trainer.infer310.package`` ships it to a
host without MindSpore, the records or this checkout.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from datatools.cli import run_cli, setup_logging
from trainer.cpu import use_fast_cpu_kernels
from trainer.exported import FORMATS, metadata_path, read_metadata
from trainer.infer310 import DATA_DIR, RESULT_DIR, read_meta, result_name

__all__ = ["DEVICES", "check_model_file", "check_export", "load_graph", "run_clips", "main"]

logger = logging.getLogger(__name__)
DEVICES = ("CPU", "Ascend")
LOG_EVERY = 100  # clips between progress lines

Graph = Callable[[np.ndarray], np.ndarray]


def _cpu_graph(model: Path) -> Graph:
    use_fast_cpu_kernels()   # before MindSpore's first kernel
    import mindspore as ms
    from mindspore import nn

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    graph = nn.GraphCell(ms.load(str(model)))
    return lambda clip: graph(ms.Tensor(clip)).asnumpy()


def _ascend_lite_graph(model: Path, device_id: int) -> Graph:
    """MindSpore Lite on an Ascend device. Untested here: written against the mindspore_lite
    Python API (Context.target, Model.build_from_file, get_inputs, predict)."""
    try:
        import mindspore_lite as mslite
    except ImportError:
        raise ValueError("--device Ascend needs MindSpore Lite for Ascend (the mindspore_lite "
                         "wheel matching the CANN version); it is not installed") from None
    context = mslite.Context()
    context.target = ["ascend"]
    context.ascend.device_id = device_id
    lite_model = mslite.Model()
    lite_model.build_from_file(str(model), mslite.ModelType.MINDIR, context)
    inputs = lite_model.get_inputs()

    def run(clip: np.ndarray) -> np.ndarray:
        inputs[0].set_data_from_numpy(clip)
        return lite_model.predict(inputs)[0].get_data_to_numpy()

    return run


def check_model_file(model: str | Path) -> Path:
    """``model`` as a Path if it is an existing MINDIR file; else one clear error."""
    model = Path(model)
    if model.suffix != FORMATS["MINDIR"]:
        raise ValueError(f"--model must be a {FORMATS['MINDIR']} file (trainer.export --format "
                         f"MINDIR), got {model}")
    if not model.is_file():
        raise FileNotFoundError(f"--model not found: {model}")
    return model


def load_graph(model: str | Path, device: str = "CPU", device_id: int = 0) -> Graph:
    """A callable clip (1, T, 3N, S, S) uint8 or float32 -> logits (1, num_classes) float32."""
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {device!r}")
    model = check_model_file(model)
    return _cpu_graph(model) if device == "CPU" else _ascend_lite_graph(model, device_id)


def check_export(model: str | Path, meta: dict) -> None:
    """Compare the export's recorded input (its JSON) with the clips of ``clips.json``, so a
    mismatch is one clear line before any inference; only warns if the JSON is missing."""
    exported = read_metadata(model)
    if exported is None:
        logger.warning("%s not found; cannot check the clips against the export",
                       metadata_path(model))
        return
    wanted, have = exported["input_dtype"], meta["dtype"]
    if wanted != have:   # first: uint8 pixels and float clips also differ in shape
        preprocess = "with" if wanted == "float32" else "without"
        raise ValueError(f"{model} takes {wanted} clips but the clips are {have}: rerun "
                         f"trainer.infer310.preprocess {preprocess} --float-input, or export with "
                         f"--input {have}")
    expected, clip_shape = exported["input_shape"], meta["clip_shape"]
    if expected[0] not in (None, 1) or expected[1:] != clip_shape[1:]:
        raise ValueError(f"{model} takes input {expected} but the clips are {clip_shape}: export "
                         f"with --batch 1 (or dynamic) and the config used for preprocess")


def run_clips(model: str | Path, work_dir: str | Path, device: str = "CPU",
              device_id: int = 0) -> dict:
    """Write ``result/<clip>_0.bin`` for every clip listed in ``clips.json``.

    Returns ``clips``, ``seconds`` (inference only, first call included) and ``clips_per_s``.
    """
    work_dir = Path(work_dir)
    meta = read_meta(work_dir)
    check_export(check_model_file(model), meta)
    graph = load_graph(model, device, device_id)
    result_dir = work_dir / RESULT_DIR
    result_dir.mkdir(parents=True, exist_ok=True)
    shape = meta["clip_shape"]
    seconds = 0.0
    for index, name in enumerate(meta["files"], 1):
        clip = np.fromfile(work_dir / DATA_DIR / name, meta["dtype"])
        if clip.size != np.prod(shape):
            raise ValueError(f"{work_dir / DATA_DIR / name} holds {clip.size} {meta['dtype']} "
                             f"values, expected {shape}: rerun preprocess")
        start = time.perf_counter()
        logits = graph(clip.reshape(shape))
        seconds += time.perf_counter() - start
        np.ascontiguousarray(logits, np.float32).tofile(result_dir / result_name(name))
        if index % LOG_EVERY == 0:
            logger.info("runner: %d/%d clips", index, len(meta["files"]))
    clips = len(meta["files"])
    summary = {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds if seconds else 0.0}
    logger.info("runner: %d clips on %s in %.2f s (%.2f clips/s), results in %s", clips, device,
                seconds, summary["clips_per_s"], result_dir)
    return summary


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    summary = run_clips(args.model, args.work, args.device, args.device_id)
    print(f"clips={summary['clips']} seconds={summary['seconds']:.2f} "
          f"clips_per_s={summary['clips_per_s']:.2f}", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run an exported MINDIR over the preprocessed "
                                     "clips (Ascend via MindSpore Lite, or CPU), one result .bin "
                                     "per clip.")
    parser.add_argument("--model", required=True, help="exported .mindir (batch 1 or dynamic)")
    parser.add_argument("--work", required=True, help="preprocess --out folder")
    parser.add_argument("--device", default="CPU", choices=DEVICES,
                        help="Ascend: MindSpore Lite (untested here); CPU: mindspore.load + GraphCell")
    parser.add_argument("--device-id", type=int, default=0, help="Ascend device index")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
