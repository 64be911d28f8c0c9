"""The one rule that turns clip logits into a video's scores, shared by trainer.eval and the 310
postprocess so both report the same top-1 for the same checkpoint. Needs only numpy: a 310 host
may have no MindSpore."""
from __future__ import annotations

import numpy as np

__all__ = ["video_scores"]


def video_scores(logits: np.ndarray) -> np.ndarray:
    """(videos, K, classes) logits -> (videos, classes) mean softmax over the K clips (float64)."""
    logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).mean(axis=1)
