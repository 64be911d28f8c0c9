"""The one rule that turns a video's view logits (K clips × C crops) into its scores, shared by
trainer.eval, trainer.predict and the 310 postprocess so all report the same top-1 for the same
checkpoint. Needs only numpy: a 310 host may have no MindSpore."""
from __future__ import annotations

import numpy as np

__all__ = ["video_scores"]


def video_scores(logits: np.ndarray) -> np.ndarray:
    """(videos, V, classes) logits -> (videos, classes) mean softmax over the V views (float64)."""
    logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).mean(axis=1)
