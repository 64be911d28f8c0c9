"""oneDNN's kernel choice for MindSpore on CPU; stdlib only, so the packaged 310 runner's CPU
route (which has no trainer.runtime: no yaml there) uses the same rule."""
from __future__ import annotations

import os

__all__ = ["ONEDNN_ISA_VARIABLE", "ONEDNN_ISA", "use_fast_cpu_kernels"]

ONEDNN_ISA_VARIABLE, ONEDNN_ISA = "ONEDNN_MAX_CPU_ISA", "AVX2"


def use_fast_cpu_kernels() -> None:
    """Cap oneDNN at AVX2 before the first CPU kernel runs (a user's own setting wins).

    On these CPUs oneDNN otherwise picks reference convolution kernels (~14x slower per
    training step, benchmarks/README.md). It only affects MindSpore's CPU kernels, so it is
    set for CPU runs alone.
    """
    os.environ.setdefault(ONEDNN_ISA_VARIABLE, ONEDNN_ISA)
