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

from datatools.cli import run_cli  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402

__all__ = ["plot_run"]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's curves to ``out`` (default: the run folder's curves.png)."""
    run = RunDir(run_dir)
    train, evals = run.read_log()
    if not train:
        raise ValueError(f"{run.log} has no training lines yet")
    out = out or run.curves
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    for key in ("top1", "top5"):
        ax_acc.plot([r["epoch"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1), title="accuracy")
    ax_acc.legend()
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
