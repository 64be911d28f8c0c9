"""Loss and accuracy curves of a run, drawn from its ``train.jsonl``.

    python -m trainer.plot runs/demo [--out runs/demo/curves.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from datatools.cli import run_cli  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402

__all__ = ["smoothed", "plot_run"]


SMOOTHING = 0.8      # weight of the running mean in the smoothed loss (as TensorBoard's slider)


def smoothed(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, debiased so the first points are not pulled towards 0."""
    out, mean = [], 0.0
    for i, value in enumerate(values, 1):
        mean = weight * mean + (1 - weight) * value
        out.append(mean / (1 - weight ** i))
    return out


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's curves to ``out`` (default: the run folder's curves.png): the loss (raw
    windows and a smoothed line) with the learning rate on a second axis, and top-1/top-5 over
    whole epochs, offset so neither hides on the frame at 1.0."""
    run = RunDir(run_dir)
    train, evals = run.read_log()
    if not train:
        raise ValueError(f"{run.log} has no training lines yet")
    out = out or run.curves
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    ax_loss.plot(steps, losses, ".", color="tab:blue", alpha=0.35, label="loss (log window)")
    ax_loss.plot(steps, smoothed(losses), color="tab:blue", label="loss (smoothed)")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, [r["lr"] for r in train], color="tab:orange", alpha=0.7, label="learning rate")
    ax_lr.set_ylabel("learning rate")
    lines = ax_loss.get_legend_handles_labels()
    lr_lines = ax_lr.get_legend_handles_labels()
    ax_loss.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right", fontsize=8)
    for key, style in (("top1", "o-"), ("top5", "s--")):
        ax_acc.plot([r["epoch"] for r in evals], [r[key] for r in evals], style, label=key)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", ylim=(-0.02, 1.05), title="accuracy")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(loc="lower right")
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(args: argparse.Namespace) -> None:
    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw loss/accuracy curves of a training run to PNG.")
    parser.add_argument("run_dir", type=Path, help="run folder, e.g. runs/demo")
    parser.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/curves.png)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
