"""StNet forward+backward clips/s on CPU: both Xception variants, with and without the oneDNN cap.

oneDNN picks reference conv kernels on these CPUs unless ``ONEDNN_MAX_CPU_ISA=AVX2`` is set before
MindSpore runs its first kernel (docs/design.md §7), so each (variant, ISA) pair runs in its own
subprocess with the variable set in its environment; ``ALL`` is oneDNN's default (no cap) and
overrides the project's own default of AVX2. The baseline is the uncapped run of the same variant
in the same invocation. Figures are medians over ``--repeats`` timed GRAPH-mode steps after one
warm-up (compile) step. CPU-seconds per step (process time, all threads) are reported too: on a
machine shared with other work they move much less than wall time.

    python -m benchmarks.model [--repeats 3] [--batch 2] [--segments 4] [--frames 3] [--size 112] [--width 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("depthwise", "dense")
ISAS = ("ALL", "AVX2")            # ALL: oneDNN's default (no cap); AVX2: what the project sets
RESULT_PREFIX = "RESULT "


def measure(args: argparse.Namespace) -> dict:
    """Run in the worker: median seconds per forward+backward step of one variant."""
    import mindspore as ms
    import numpy as np

    from trainer.model import StNet

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = StNet(num_classes=400, frames_per_segment=args.frames, width=args.width, xception=args.variant)
    net.set_train(True)
    loss_fn = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    grad_fn = ms.value_and_grad(ms.nn.WithLossCell(net, loss_fn), None, net.trainable_params())

    @ms.jit
    def step(clip, label):
        return grad_fn(clip, label)

    rng = np.random.default_rng(0)
    clip = ms.Tensor(rng.standard_normal(
        (args.batch, args.segments, 3 * args.frames, args.size, args.size), np.float32))
    label = ms.Tensor(rng.integers(0, 400, args.batch).astype(np.int32))
    step(clip, label)[0].asnumpy()                     # compile + warm-up
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step(clip, label)[0].asnumpy()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"variant": args.variant, "isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "times": times,
            "cpu_times": cpu_times}


def _run_worker(args: argparse.Namespace, variant: str, isa: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.model", "--worker", "--variant", variant,
           "--repeats", str(args.repeats), "--batch", str(args.batch), "--segments", str(args.segments),
           "--frames", str(args.frames), "--size", str(args.size), "--width", str(args.width)]
    done = subprocess.run(cmd, env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa}, capture_output=True,
                          text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {variant}/{isa} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed steps per run (median reported)")
    p.add_argument("--batch", type=int, default=2, help="clips per step")
    p.add_argument("--segments", type=int, default=4, help="T")
    p.add_argument("--frames", type=int, default=3, help="N")
    p.add_argument("--size", type=int, default=112, help="crop side")
    p.add_argument("--width", type=int, default=32, help="stem width (64 = full ResNet-50)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("repeats", "batch", "segments", "frames", "size", "width"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.worker:
        print(RESULT_PREFIX + json.dumps(measure(args)))
        return 0
    print(f"input (B,T,3N,H,W)=({args.batch},{args.segments},{3 * args.frames},{args.size},{args.size}) "
          f"width={args.width} depth=50, GRAPH mode, forward+backward, median of {args.repeats}")
    print(f"{'variant':<10} {'ONEDNN_MAX_CPU_ISA':<19} {'s/step':>8} {'clips/s':>8} {'vs ALL':>7} "
          f"{'cpu-s/step':>11} {'clips/cpu-s':>12} {'vs ALL':>7}")
    for variant in VARIANTS:
        baseline = None
        for isa in ISAS:
            print(f"measuring {variant} with ONEDNN_MAX_CPU_ISA={isa} ...", flush=True)
            result = _run_worker(args, variant, isa)
            wall, cpu = statistics.median(result["times"]), statistics.median(result["cpu_times"])
            baseline = baseline or (wall, cpu)
            print(f"{variant:<10} {isa:<19} {wall:>8.3f} {args.batch / wall:>8.2f} {baseline[0] / wall:>6.1f}x "
                  f"{cpu:>11.3f} {args.batch / cpu:>12.2f} {baseline[1] / cpu:>6.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
