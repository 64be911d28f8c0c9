"""Evaluation cost per video of the test protocols: 1 crop against 3 crops (× K clips).

Two measurements, both medians over ``--repeats``:

- ``eval``: ``trainer.eval.evaluate`` over a converted split with the config's network (decode,
  crop, normalize and forward of every view), seconds and CPU-seconds per video, for
  ``test.crops`` 1 and 3; the baseline is the 1-crop run of the same invocation.
- ``recipe view``: one forward of the reference recipe's StNet-R50 (T=7, N=5, 224×224) on one
  view, in GRAPH mode after a compile step; a protocol's network cost per video is its number
  of views times this.

    python -m benchmarks.protocol --config configs/demo.yaml --repeats 3   # needs `make records`
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "stnet_r50_k400.yaml"
PROTOCOLS = ((1, 1), (1, 3), (10, 1), (10, 3))    # (clips, crops) reported for the recipe


def _timed(work) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def eval_seconds(config: str, overrides: list[str], crops: int, repeats: int) -> dict:
    """Median wall and CPU seconds per video of one evaluation pass at ``test.crops=crops``."""
    import mindspore as ms

    from trainer.config import load_config
    from trainer.data import create_dataset
    from trainer.eval import evaluate
    from trainer.model import create_model
    from trainer.precision import PixelInput

    cfg = load_config(config, [*overrides, f"test.crops={crops}"])
    ms.set_seed(0)
    net = PixelInput(create_model(cfg))
    videos = []
    runs = []
    for _ in range(repeats + 1):     # the first pass compiles the graph
        dataset = create_dataset(cfg, "val", training=False)
        runs.append(_timed(lambda: videos.append(evaluate(net, dataset, cfg.model.num_classes)["videos"])))
    wall, cpu = (statistics.median(r[i] for r in runs[1:]) for i in (0, 1))
    return {"crops": crops, "videos": videos[-1], "s_per_video": wall / videos[-1],
            "cpu_s_per_video": cpu / videos[-1]}


def recipe_view_seconds(repeats: int) -> float:
    """Median seconds of one forward of the recipe's network on one view."""
    import mindspore as ms
    import numpy as np

    from trainer.config import load_config
    from trainer.model import create_model

    cfg = load_config(RECIPE, ["device_target=CPU"])
    ms.set_seed(0)
    net = create_model(cfg)
    net.set_train(False)
    n = cfg.data.frames_per_segment
    view = ms.Tensor(np.zeros((1, cfg.test.segments, 3 * n, cfg.test.crop, cfg.test.crop), np.float32))
    net(view).asnumpy()      # compile
    return statistics.median(_timed(lambda: net(view).asnumpy())[0] for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="config whose val split is evaluated")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--skip-recipe", action="store_true", help="skip the recipe's per-view forward")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    import mindspore as ms

    from trainer.cpu import use_fast_cpu_kernels
    use_fast_cpu_kernels()
    ms.set_device("CPU")
    rows = [eval_seconds(args.config, args.overrides, crops, args.repeats) for crops in (1, 3)]
    base = rows[0]["cpu_s_per_video"]
    for row in rows:
        row["cpu_ratio_vs_1_crop"] = row["cpu_s_per_video"] / base
        print(f"eval {args.config} test.crops={row['crops']}: {row['s_per_video'] * 1e3:.1f} ms/video, "
              f"{row['cpu_s_per_video'] * 1e3:.1f} CPU-ms/video, {row['cpu_ratio_vs_1_crop']:.2f}x "
              f"the 1-crop CPU time ({row['videos']} videos)")
    result = {"eval": rows}
    if not args.skip_recipe:
        view = recipe_view_seconds(args.repeats)
        result["recipe_view_s"] = view
        for clips, crops in PROTOCOLS:
            print(f"recipe StNet-R50 {clips} clip(s) x {crops} crop(s): {clips * crops} views, "
                  f"{clips * crops * view:.2f} s/video of network on this CPU")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
