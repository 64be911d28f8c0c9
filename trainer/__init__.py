"""StNet training, evaluation and export on MindRecord shards.

oneDNN picks its reference (≈27× slower) conv kernels on these CPUs unless capped at AVX2, and
the cap only takes effect if set before MindSpore runs its first kernel (DESIGN.md §5). Every
trainer module is imported through this package, so setting it here orders it correctly. It only
affects MindSpore's CPU kernels; a user's own setting wins.
"""
import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
