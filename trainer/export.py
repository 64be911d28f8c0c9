"""Export a trained StNet for inference: MINDIR anywhere, AIR on Ascend, ONNX for other runtimes.

    python -m trainer.export --config configs/demo.yaml --ckpt runs/demo/best.ckpt --format MINDIR

The graph takes one batch of test clips (B, T, 3N, S, S) float32 as the config's test protocol
makes them (T = test.segments, N = data.frames_per_segment, S = test.crop) and returns logits
(B, num_classes); with ``--input uint8`` it takes the loader's uint8 pixels (B, T, N, S, S, 3)
instead and normalizes them itself (4× fewer bytes per clip for the 310 path). With K clips × C crops per video
(test.clips, test.crops) the graph still scores single clips: a video's views are run one by one
and their softmax averaged (as trainer.eval and trainer.infer310.postprocess do), so one exported
file serves every protocol.
``<file>.json`` beside the export records the resolved config, the amp level the graph was cast
with (by default the level the checkpoint's run trained with, ``trainer.precision.run_precision``),
the input shape (batch null when dynamic) and dtype, the class names and the file's sha256, so a
deployment can check it runs the graph it was given.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import mindspore as ms
from mindspore import nn

from datatools.cli import run_cli, setup_logging
from datatools.schema import LABELS_NAME, read_labels
from trainer import cloud
from trainer.checkpoint import checkpoint_arg
from trainer.config import Config, config_from_args, config_parser
from trainer.data import views_per_video
from trainer.exported import (DYNAMIC, FORMATS, export_path, metadata_path, read_metadata,
                              sha256_file)
from trainer.runtime import init_runtime, resolve_device_target

__all__ = ["INPUT_DTYPES", "parse_batch", "input_shape", "export_network", "main"]

logger = logging.getLogger(__name__)

DEFAULT_OUT = "export"
INPUT_DTYPES = {"float32": ms.float32, "uint8": ms.uint8}


def parse_batch(text: str) -> int | None:
    """``--batch``: a positive clip count, or ``dynamic`` (None: any batch at run time)."""
    if text == DYNAMIC:
        return None
    try:
        batch = int(text)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ValueError(f"--batch must be a positive integer or {DYNAMIC!r}, got {text!r}")
    return batch


def input_shape(cfg: Config, batch: int | None, input_dtype: str = "float32") -> tuple[int | None, ...]:
    """(B, T, 3N, S, S) float clips of the test protocol, or (B, T, N, S, S, 3) uint8 pixels as
    the loader makes them; B None means dynamic."""
    crop, n = cfg.test.crop, cfg.data.frames_per_segment
    if input_dtype == "uint8":
        return (batch, cfg.test.segments, n, crop, crop, 3)
    return (batch, cfg.test.segments, 3 * n, crop, crop)


def _check_request(cfg: Config, fmt: str, batch: int | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {tuple(FORMATS)}, got {fmt!r}")
    if fmt == "AIR" and batch is None:
        raise ValueError(f"--batch {DYNAMIC} is not supported for AIR (deprecated in MindSpore 2.10, "
                         f"never verified with a dynamic batch here); use MINDIR for a dynamic "
                         f"batch, or a fixed --batch such as 1")
    if fmt == "AIR" and (device := resolve_device_target(cfg)) != "Ascend":
        raise ValueError(f"--format AIR needs device_target=Ascend (MindSpore writes AIR only on "
                         f"Ascend), got {device!r}; use MINDIR or ONNX here")
    if fmt == "ONNX" and batch is None:
        raise ValueError(f"--batch {DYNAMIC} is not supported for ONNX (MindSpore's ONNX exporter "
                         f"needs static shapes); give a fixed --batch such as 1")


def _class_names(cfg: Config) -> list[str] | None:
    labels = Path(cfg.data.root) / LABELS_NAME
    return read_labels(labels) if labels.is_file() else None


def export_network(net: nn.Cell, cfg: Config, fmt: str, *, batch: int | None = 1,
                   out_dir: str | Path = DEFAULT_OUT, checkpoint: str | Path | None = None,
                   input_dtype: str = "float32") -> Path:
    """Export ``net`` (weights already loaded) and write its metadata JSON; returns the file.

    Parameters
    ----------
    net : nn.Cell
        StNet taking (B, T, 3N, S, S) float32.
    cfg : Config
        Gives the input shape (``test.*``, ``data.frames_per_segment``), the class names
        (``data.root``/labels.txt when present) and the amp level ``net`` was cast with
        (``amp_level(cfg)``: pass ``run_precision``'s config); stored in the JSON.
    fmt : str
        ``MINDIR`` | ``AIR`` (Ascend only) | ``ONNX`` (fixed batch only).
    batch : int or None
        Clips per call; None exports a dynamic batch (MINDIR, AIR).
    out_dir : path
        Folder for ``stnet_<b1|dynamic>.<ext>`` and its ``.json``; created if missing.
    checkpoint : path, optional
        Recorded in the JSON.
    input_dtype : str
        ``float32``: host-normalized clips (the model zoo's interface). ``uint8``: the
        loader's pixels, normalized inside the graph (``trainer.precision.PixelInput``), as
        trainer.eval feeds them.
    """
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"--input must be one of {tuple(INPUT_DTYPES)}, got {input_dtype!r}")
    _check_request(cfg, fmt, batch)
    shape = input_shape(cfg, batch, input_dtype)
    path = export_path(out_dir, fmt, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    from trainer.precision import PixelInput, amp_level
    if input_dtype == "uint8":
        net = PixelInput(net)
    net.set_train(False)
    start = time.perf_counter()
    # MindSpore 2.10 warns that ms.export(file_format="ONNX") will go in favour of
    # mindspore.onnx.export, but that one fails on a bare nn.Dense here ("i: 3 out of range: 3"
    # in MatMul's CNode): ONNX stays on ms.export until the replacement exports this network.
    ms.export(net, ms.Tensor(shape=list(shape), dtype=INPUT_DTYPES[input_dtype]),
              file_name=str(path.with_suffix("")), file_format=fmt)
    seconds = time.perf_counter() - start
    if not path.is_file():
        raise FileNotFoundError(f"MindSpore reported no error but wrote no {path}")
    meta = {
        "format": fmt,
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "input_shape": list(shape),
        "input_dtype": input_dtype,
        "output": ["batch", cfg.model.num_classes],
        "amp_level": amp_level(cfg),
        "views_per_video": views_per_video(cfg),
        "classes": _class_names(cfg),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "mindspore": ms.__version__,
        "config": cfg.to_dict(),
    }
    metadata_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("exported %s (%s, input %s %s, %.1f MB) in %.1f s", path, fmt, list(shape),
                input_dtype, meta["bytes"] / 1e6, seconds)
    return path


def main(args: argparse.Namespace) -> Path:
    cfg = config_from_args(args)
    batch = parse_batch(args.batch)
    _check_request(cfg, args.format, batch)  # before the slow network build
    cfg = cloud.prepare(cfg, ())   # labels.txt only: the class names of the metadata
    ckpt = checkpoint_arg(cfg, cloud.checkpoint(cfg, args.ckpt))
    rank, _ = init_runtime(cfg)
    setup_logging(rank)
    from trainer.precision import inference_network, run_precision  # heavy; after the cheap checks
    cfg = run_precision(cfg, ckpt)   # the JSON records the level the network is cast with
    # The graph evaluated in training (float16 inside on O2); export_network adds the input.
    net = inference_network(cfg, ckpt, pixels=False)
    out_dir = Path(args.out) if args.out else Path(DEFAULT_OUT) / cfg.name
    path = export_network(net, cfg, args.format, batch=batch, out_dir=out_dir, checkpoint=ckpt,
                          input_dtype=args.input)
    meta = read_metadata(path)
    print(f"exported {path} format={meta['format']} input={meta['input_shape']} "
          f"dtype={meta['input_dtype']} bytes={meta['bytes']} sha256={meta['sha256'][:16]}",
          flush=True)
    if rank == 0:
        cloud.push_outputs(cfg, [path, metadata_path(path)])
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser("Export a StNet checkpoint for inference (MINDIR, AIR on Ascend, ONNX) "
                           "with a JSON of config, input shape, classes and checksum beside it.")
    parser.add_argument("--ckpt", help="checkpoint (default: <train.output_dir>/<name>/best.ckpt)")
    parser.add_argument("--format", default="MINDIR", choices=tuple(FORMATS),
                        help="MINDIR (any device), AIR (Ascend only), ONNX (fixed batch)")
    parser.add_argument("--batch", default="1",
                        help=f"clips per call: a positive integer or {DYNAMIC!r} (default 1)")
    parser.add_argument("--input", default="float32", choices=tuple(INPUT_DTYPES),
                        help="float32: host-normalized clips (the model zoo's interface); uint8: "
                        "the loader's pixels, normalized inside the graph (the 310 package's "
                        "clips, 4x smaller)")
    parser.add_argument("--out", help=f"output folder (default: {DEFAULT_OUT}/<name>)")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
