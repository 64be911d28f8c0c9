"""Train and eval on a split of thousands of shards under a low open-file limit (issue 23,
datatools/openfiles.py): MindDataset opens every shard of the split at once, 3-4 descriptors
each. Under the common soft limit of 1024 the commands raise it towards the hard limit and run;
under a hard limit below the need they refuse in one line before the network or any pipeline
is built, and ``datatools.inspect`` (one shard at a time in each child) still reads the split."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from datatools.openfiles import DESCRIPTORS_PER_SHARD, RESERVED_DESCRIPTORS
from datatools.schema import LABELS_NAME
from tests.many_shards import fan_out
from tests.trainer.test_config import DEMO, REPO
from trainer.checkpoint import save_weights
from trainer.config import load_config
from trainer.model import create_model

pytestmark = pytest.mark.slow   # thousands of shards written, MindSpore commands in subprocesses:
                                # `make test-e2e` (.ci/run), not `make test`

SHARDS = 2000       # ~7,500 descriptors to read at once: far above a soft limit of 1024
SOFT_LIMIT = 1024
LOW_HARD_LIMIT = 256
INSPECTED_SHARDS = 40   # ~420 descriptors if opened at once (256 + 4 a shard): more than the low hard limit
TIMEOUT = 300
SMALL = ["model.width=8", "mode=pynative", "data.batch_size=4", "test.batch_size=8",
         "train.log_interval=1", "train.epochs=1", "train.warmup_epochs=0"]


def _scratch_parent() -> str | None:
    """/dev/shm where there is one: MindRecord syncs each shard's index database as it commits
    it, 18 ms a shard on a disk here (36 s for the split) against 8 ms in memory."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="module")
def many_records(tiny_records) -> Iterator[Path]:
    """tiny_records' labels and val split, and ``many``: SHARDS one-video shards of its train
    videos (tests/many_shards.py)."""
    base = Path(tempfile.mkdtemp(prefix="many-shards-", dir=_scratch_parent()))
    try:
        root = base / "records"
        root.mkdir()
        shutil.copy(tiny_records.labels, root / LABELS_NAME)
        shutil.copytree(tiny_records.split("val"), root / "val")
        fan_out(tiny_records.split("train"), root / "many", SHARDS)
        yield root
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def weights(many_records, tmp_path_factory) -> Path:
    """Untrained weights of the SMALL network: eval only has to run."""
    cfg = load_config(DEMO, [f"data.root={many_records}", *SMALL])
    path = tmp_path_factory.mktemp("weights") / "init.ckpt"
    save_weights(create_model(cfg), path, 0)
    return path


def _limited(soft: int, hard: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return limit


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _run_until(args: list[str], marker: str, soft: int, hard: int) -> tuple[bool, str]:
    """Run ``python -m *args`` under the limits until a line holding ``marker`` (then stop it)
    or its end; (marker seen, output)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=_env(),
                            preexec_fn=_limited(soft, hard), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(TIMEOUT, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    lines, seen = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                seen = True
                break
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return seen, "".join(lines)


def _hard_limit_allows(shards: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * shards
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this host's hard limit {hard} is below the {need} the test needs")


def test_train_runs_a_step_on_thousands_of_shards_under_a_soft_limit_of_1024(many_records, tmp_path):
    _hard_limit_allows(SHARDS)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    started = time.perf_counter()
    seen, out = _run_until(["trainer.train", "--config", DEMO, f"data.root={many_records}",
                            "data.train_split=many", f"train.output_dir={tmp_path}", "name=many",
                            *SMALL], f"step 1/{SHARDS // 4} loss", SOFT_LIMIT, hard)
    assert seen, out[-3000:]
    print(f"train: first step after {time.perf_counter() - started:.1f} s")


def test_eval_runs_a_batch_on_thousands_of_shards_under_a_soft_limit_of_1024(many_records, weights):
    _hard_limit_allows(SHARDS)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    started = time.perf_counter()
    # The eval progress line (every 5 s) counts the batches scored so far.
    seen, out = _run_until(["trainer.eval", "--config", DEMO, "--ckpt", weights,
                            f"data.root={many_records}", "data.val_split=many", *SMALL],
                           f"/{SHARDS // 8} batches", SOFT_LIMIT, hard)
    assert seen, out[-3000:]
    assert f"eval: 0/{SHARDS // 8}" not in out
    print(f"eval: scoring after {time.perf_counter() - started:.1f} s")


def _refusal(split: Path, shards: int) -> str:
    need = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_SHARD * shards
    return (f"error: {split} has {shards} shards: reading it takes about {need} open files, above "
            f"this host's hard limit of {LOW_HARD_LIMIT} (ulimit -Hn)")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_too_many_shards_for_the_hard_limit_are_refused_in_one_line(many_records, weights, tmp_path, command):
    args = {"train": ["trainer.train", "data.train_split=many", f"train.output_dir={tmp_path}", "name=refused"],
            "eval": ["trainer.eval", "--ckpt", weights, "data.val_split=many"]}[command]
    proc = subprocess.run([sys.executable, "-m", args[0], "--config", DEMO, *map(str, args[1:]),
                           f"data.root={many_records}", *SMALL],
                          cwd=REPO, env=_env(), preexec_fn=_limited(LOW_HARD_LIMIT, LOW_HARD_LIMIT),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(_refusal(many_records / "many", SHARDS)), errors
    assert "--videos-per-shard" in errors[0]
    assert not (tmp_path / "refused").exists()      # refused before the run folder is taken


def test_inspect_reads_more_shards_than_the_hard_limit_allows_at_once(tiny_records, tmp_path):
    """inspect opens one shard at a time in each of its --workers children: a split that the
    trainer must refuse under this hard limit is still inspected, not refused."""
    split = fan_out(tiny_records.split("train"), tmp_path / "records" / "many", INSPECTED_SHARDS)
    shutil.copy(tiny_records.labels, tmp_path / "records" / LABELS_NAME)
    proc = subprocess.run([sys.executable, "-m", "datatools.inspect", split, "--workers", "2"],
                          cwd=REPO, env=_env(), preexec_fn=_limited(LOW_HARD_LIMIT, LOW_HARD_LIMIT),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert f"videos: {INSPECTED_SHARDS} ok, 0 failed, in {INSPECTED_SHARDS} shards" in lines
    assert lines[-1].startswith("verified: every shard matches the manifest")


def test_check_records_refuses_before_the_network_is_built(many_records, monkeypatch):
    """train and eval check their records (trainer.data.check_records) before they build the
    network: that is where a split the hard limit cannot hold is refused."""
    from datatools import openfiles
    from trainer.data import check_records
    monkeypatch.setattr(openfiles, "_splits_read", {})    # this process's other splits left out
    monkeypatch.setattr(openfiles.resource, "getrlimit", lambda _: (LOW_HARD_LIMIT, LOW_HARD_LIMIT))
    refusal = _refusal(many_records / "many", SHARDS).removeprefix("error: ")
    for overrides, splits in ((["data.train_split=many"], ("train", "val")),
                              (["data.val_split=many"], ("val",))):
        cfg = load_config(DEMO, [f"data.root={many_records}", *overrides, *SMALL])
        with pytest.raises(ValueError) as refused:
            check_records(cfg, splits)
        assert str(refused.value).startswith(refusal)
