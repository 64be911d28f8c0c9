"""ImageNet ResNet weights into StNet's backbone, with conv1 inflated from 3 to 3N input channels.

Two sources are read: a MindSpore checkpoint in the official ResNet naming (``conv1.weight``,
``bn1.gamma``, ``layerX.Y.convK.weight``, ``layerX.Y.down_sample_layer.0/1.*``, ``end_point.*``)
and a torchvision-style state dict saved with ``np.savez`` (``bn.weight``/``running_mean``,
``downsample``, ``fc``), renamed to the former. Entries the network lacks (the ImageNet classifier,
optimizer moments) are skipped; network parameters the file lacks (temporal blocks, Xception head,
fc) keep their fresh initialisation. Both lists are logged and returned; a shape mismatch on a
shared name is an error, never a silent partial load.

Inflation: each super-image stacks N RGB frames frame-major, so the ImageNet kernel W (O, 3, k, k)
becomes W/N tiled N times along the input channels. On a clip whose N frames are identical the
inflated conv1 then gives exactly the ImageNet conv1's response to one frame. (The reference averages
W over RGB instead, which discards colour; on grey frames both agree.) A stem that already has 3N
input channels (a full StNet checkpoint such as the model zoo's) is loaded as it is.
"""
from __future__ import annotations

import logging
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor

from trainer.checkpoint import describe_entries
from trainer.model import StNet

__all__ = ["STEM_KEY", "FRESH_PREFIXES", "inflate_stem", "torchvision_to_mindspore", "read_state",
           "load_pretrained"]

logger = logging.getLogger(__name__)

STEM_KEY = "conv1.weight"
FRESH_PREFIXES = ("temp1.", "temp2.", "xception.", "fc.")   # StNet layers ImageNet cannot provide
CLASSIFIER_PREFIX = "fc."      # StNet's classifier: another class count means fine-tuning
CKPT_SUFFIX, NPZ_SUFFIX = ".ckpt", ".npz"
_TORCH_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}
_TORCH_CLASSIFIER = "fc."          # torchvision's 1000-way head: not StNet's fc (1024 inputs)


def inflate_stem(weight: np.ndarray, frames_per_segment: int) -> np.ndarray:
    """(O, 3, k, k) ImageNet kernel → (O, 3N, k, k) that keeps its response on N identical frames."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"{STEM_KEY} to inflate must have shape (O, 3, k, k), got {weight.shape}")
    return np.tile(weight / frames_per_segment, (1, frames_per_segment, 1, 1))


def torchvision_to_mindspore(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rename a torchvision ResNet state dict to MindSpore ResNet names.

    Returns ``(renamed, dropped)``; ``dropped`` holds the classifier and ``num_batches_tracked``.
    """
    bn_prefixes = {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}
    renamed, dropped = {}, []
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if key.startswith(_TORCH_CLASSIFIER) or leaf == "num_batches_tracked":
            dropped.append(key)
            continue
        if prefix in bn_prefixes:
            leaf = _TORCH_BN.get(leaf, leaf)
        renamed[f"{prefix.replace('downsample.', 'down_sample_layer.')}.{leaf}"] = value
    return renamed, dropped


def read_state(path: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by MindSpore name from a .ckpt or torchvision .npz, plus entries dropped on renaming."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    if path.suffix == CKPT_SUFFIX:
        return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}, []
    if path.suffix == NPZ_SUFFIX:
        with np.load(path) as npz:
            return torchvision_to_mindspore({k: npz[k] for k in npz.files})
    raise ValueError(f"pretrained checkpoint must end in {CKPT_SUFFIX} or {NPZ_SUFFIX}, got {path.name!r}")


def load_pretrained(net: StNet, path: str | Path) -> dict[str, list[str]]:
    """Load every backbone weight ``path`` holds into ``net``; conv1 is inflated if it has 3 inputs.

    An StNet checkpoint of another class count (fine-tuning, e.g. Kinetics-400 to UCF101) loads
    every layer but the classifier, which keeps its fresh initialisation; both are reported.

    Returns ``{"loaded", "skipped", "missing", "reinitialised"}``: names loaded, file entries the
    network lacks, network parameters the file lacks, classifier parameters of another class
    count. Raises ValueError on any other shape mismatch or when nothing matches.
    """
    state, skipped = read_state(path)
    params = {p.name: p for p in net.get_parameters()}
    stem = state.get(STEM_KEY)
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3 and params[STEM_KEY].shape[1] != 3:
        state[STEM_KEY] = inflate_stem(stem, net.frames_per_segment)
        logger.info("%s: inflated %s %s → %s", path, STEM_KEY, stem.shape, state[STEM_KEY].shape)
    matched, other_classes = {}, {}
    for key, value in state.items():
        if key not in params:
            skipped.append(key)
            continue
        expected = tuple(params[key].shape)
        if tuple(value.shape) != expected:
            if key.startswith(CLASSIFIER_PREFIX) and tuple(value.shape[1:]) == expected[1:]:
                other_classes[key] = value.shape[0]     # fine-tuning to another class count
                continue
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the network expects {expected}")
        matched[key] = Parameter(Tensor(value, dtype=params[key].dtype), name=key)
    if not matched:
        raise ValueError(f"{path}: no entry matches a network parameter (first entries: {sorted(state)[:3]})")
    not_loaded, unused = ms.load_param_into_net(net, matched)
    if unused:
        raise ValueError(f"{path}: MindSpore did not load {unused[:3]} although the names matched")
    missing = sorted(not_loaded)
    for key in sorted(skipped):
        logger.debug("%s: skipped %s (not a network parameter)", path, key)
    for key in missing:
        if not key.startswith(FRESH_PREFIXES):   # the classifier among them
            logger.warning("%s: missing %s (keeps its fresh initialisation)", path, key)
    logger.info("%s: loaded %d parameters; %d parameters keep their fresh initialisation", path,
                len(matched), len(missing))
    if skipped:
        logger.info("%s: skipped %d entries that are not network parameters: %s", path, len(skipped),
                    describe_entries(skipped))
    if other_classes:
        logger.info("%s: classifier %s freshly initialised: the checkpoint classifies %d classes, "
                    "the network %d (fine-tuning)", path, ", ".join(sorted(other_classes)),
                    next(iter(other_classes.values())), params[f"{CLASSIFIER_PREFIX}bias"].shape[0])
    return {"loaded": sorted(matched), "skipped": sorted(skipped), "missing": missing,
            "reinitialised": sorted(other_classes)}
