"""Gather what a 310 host needs into one folder that runs without this checkout.

    python -m trainer.infer310.package --model export/demo/310/stnet_b1.mindir --work export/demo/310 \
        --out export/demo/310/package

Host 1 (this checkout, records, MindSpore) exports, preprocesses and packages; host 2 (an
Ascend 310 with CANN, MindSpore Lite and numpy only) runs ``bash run.sh Ascend 0`` in a copy of
the folder:

    run.sh                  runner, then postprocess (``bash run.sh [Ascend|CPU] [device_id]``)
    requirements-310.txt    numpy pin and the MindSpore Lite wheel to install
    model/<name>.mindir     the export and its JSON, checked here against the clips
    work/                   clips.json, label_ids.npy, labels.txt, data/*.bin (result/ on run)
    lib/trainer/...         the runner, the postprocess and every project module they import

The modules are found by following the runner's and postprocess's absolute imports of project
packages (the project's import style), so a new project import is shipped with them; a new
third-party import is not, and tests/trainer/test_infer310.py runs the folder in a venv holding
only numpy and MindSpore to catch it.
"""
from __future__ import annotations

import argparse
import ast
import shutil
from pathlib import Path

from datatools.cli import run_cli
from datatools.schema import read_labels
from trainer.exported import metadata_path, read_metadata, sha256_file
from trainer.infer310 import DATA_DIR, LABELS_FILE, META_NAME, NAMES_FILE, read_meta
from trainer.infer310.runner import check_export, check_model_file

__all__ = ["ENTRY_MODULES", "source_files", "build_package", "main"]

ENTRY_MODULES = ("trainer.infer310.runner", "trainer.infer310.postprocess")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the trainer package
ASSETS = Path(__file__).resolve().parent  # run.sh and requirements-310.txt live beside this file
RUN_SCRIPT = "run.sh"
REQUIREMENTS = "requirements-310.txt"
LIB_DIR, MODEL_DIR, WORK_DIR = "lib", "model", "work"


def _module_file(name: str) -> Path | None:
    """The project file (relative to SOURCE_ROOT) defining module ``name``, None if not ours."""
    base = SOURCE_ROOT.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path.relative_to(SOURCE_ROOT)
    return None


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth (lazy imports included);
    ``from a import b`` yields both ``a`` and ``a.b``, since ``b`` may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def source_files(modules: tuple[str, ...] = ENTRY_MODULES) -> list[Path]:
    """Project files ``modules`` need, with their packages' ``__init__.py``, relative to the
    checkout: the closure of their imports within the project."""
    found: set[Path] = set()
    todo = list(modules)
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in found:
                found.add(path)
                todo.extend(_imported_names(SOURCE_ROOT / path))
    return sorted(found)


def _check_out(out: Path, inputs: list[Path]) -> None:
    """``out`` is replaced on each run: refuse a folder that is not an earlier package, or one
    holding the inputs (replacing it would delete them)."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / RUN_SCRIPT).is_file()):
        raise ValueError(f"--out {out} exists and is not a package (no {RUN_SCRIPT}); give a new "
                         f"or empty folder")
    for path in inputs:
        if path.resolve().is_relative_to(out.resolve()):
            raise ValueError(f"--out {out} contains {path}; give a folder outside it")


def _check_model(model: Path, work: Path, meta: dict) -> None:
    """What the 310 host would find only after the copy: a stale JSON, other clips or classes."""
    exported = read_metadata(model)
    if exported is None:
        raise FileNotFoundError(f"{metadata_path(model)} not found: the 310 host checks the clips "
                                f"against it; export with trainer.export")
    if sha256_file(model) != exported["sha256"]:
        raise ValueError(f"{model} does not match the sha256 in {metadata_path(model)}: re-export")
    check_export(model, meta)
    if exported["classes"] is not None and exported["classes"] != read_labels(work / NAMES_FILE):
        raise ValueError(f"{work / NAMES_FILE} differs from the classes {model} was exported "
                         f"with: preprocess and export with the same data.root")


def build_package(model: str | Path, work: str | Path, out: str | Path) -> dict:
    """Write the self-contained 310 folder ``out`` (replacing an earlier package there).

    Returns ``out``, ``clips`` and ``bytes`` (all files written).
    """
    model, work, out = check_model_file(model), Path(work), Path(out)
    meta = read_meta(work)
    for name in (LABELS_FILE, NAMES_FILE):
        if not (work / name).is_file():
            raise FileNotFoundError(f"{work / name} not found: rerun trainer.infer310.preprocess")
    _check_model(model, work, meta)
    _check_out(out, [model, work])
    if out.exists():
        shutil.rmtree(out)

    for path in source_files():
        (out / LIB_DIR / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE_ROOT / path, out / LIB_DIR / path)
    for name in (RUN_SCRIPT, REQUIREMENTS):
        shutil.copyfile(ASSETS / name, out / name)
    (out / RUN_SCRIPT).chmod(0o755)
    (out / MODEL_DIR).mkdir()
    for path in (model, metadata_path(model)):
        shutil.copyfile(path, out / MODEL_DIR / path.name)
    (out / WORK_DIR / DATA_DIR).mkdir(parents=True)
    for name in (META_NAME, LABELS_FILE, NAMES_FILE):
        shutil.copyfile(work / name, out / WORK_DIR / name)
    for name in meta["files"]:
        shutil.copyfile(work / DATA_DIR / name, out / WORK_DIR / DATA_DIR / name)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    return {"out": out, "clips": len(meta["files"]), "bytes": size}


def main(args: argparse.Namespace) -> dict:
    summary = build_package(args.model, args.work, args.out)
    print(f"package={summary['out']} clips={summary['clips']} bytes={summary['bytes']} "
          f"run: bash {summary['out'] / RUN_SCRIPT} [Ascend|CPU] [device_id]", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Gather an exported MINDIR, the preprocessed "
                                     "clips and the runner/postprocess code into one folder a "
                                     "310 host runs with `bash run.sh Ascend 0`, without this "
                                     "checkout.")
    parser.add_argument("--model", required=True, help="exported .mindir with its JSON beside it")
    parser.add_argument("--work", required=True, help="trainer.infer310.preprocess --out folder")
    parser.add_argument("--out", required=True, help="package folder (replaced if it is one)")
    return parser


if __name__ == "__main__":
    raise SystemExit(run_cli(build_parser(), main))
