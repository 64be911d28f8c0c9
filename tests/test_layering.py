"""The package layering of docs/design.md §1: benchmarks -> trainer -> datatools, and the trainer
sees only datatools' on-disk contract (schema, manifest, frames: how stored frames decode, and
openfiles: what reading a split's shards takes), its command-line plumbing (cli, progress), for
trainer.predict the converter's decode path (video) and, for trainer.cloud, its OBS transfers
(obs, sync)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_MAY_IMPORT = {"datatools.schema", "datatools.manifest", "datatools.frames", "datatools.cli",
                      "datatools.progress", "datatools.openfiles",
                      "datatools.video", "datatools.obs", "datatools.sync"}


def _imports(package: str) -> dict[str, set[str]]:
    """Absolute project imports (any depth, lazy ones included) of each module of ``package``."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(REPO))] = {n for n in names
                                              if n.split(".")[0] in ("datatools", "trainer", "benchmarks")}
    return found


def test_datatools_imports_neither_trainer_nor_benchmarks():
    bad = {m: sorted(n for n in names if not n.startswith("datatools"))
           for m, names in _imports("datatools").items()}
    assert not {m: n for m, n in bad.items() if n}


def test_trainer_sees_only_the_datatools_contract():
    bad = {m: sorted(n for n in names if n.startswith("benchmarks")
                     or (n.startswith("datatools") and n not in TRAINER_MAY_IMPORT))
           for m, names in _imports("trainer").items()}
    assert not {m: n for m, n in bad.items() if n}
