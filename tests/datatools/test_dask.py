"""datatools.convert on a real Dask cluster: a scheduler and two one-thread workers started with
the `dask` command on 127.0.0.1, as README's "Converting on a cluster" starts them on machines
sharing storage. The output is the local run's, byte for byte; --upload pushes from the workers;
a worker killed mid-shard has its task retried on another worker (dask's default), and where the
scheduler allows no retry the run stops with one line, leaves no partial shard, and the same
command then resumes; a scheduler that cannot be reached is one line."""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dask.distributed import Client

from datatools import cluster, convert, schema, sync
from datatools.cli import run_cli
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import (LOCK_NAME, RECORD_SUFFIX, ShardFiles, read_digests, read_manifest,
                                read_rows, shard_index)
from datatools.synth import SynthSpec, make_dataset
from tests.conftest import KEY_ID, SECRET, free_port

DASK = Path(sys.executable).parent / "dask"
# 3 classes x 4 videos of 16 frames at 160x120 (kept: an even width encodes repeatably), two per
# shard: 6 shards, so tasks are left to kill once the first is done.
SPEC = SynthSpec(num_frames=16, width=160, height=120)
SHARDS = 6


pytestmark = pytest.mark.slow   # Dask clusters of subprocesses


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """The synthetic split and its local (loky) conversion, the reference every cluster run must
    equal; ``args`` converts it into the folder given as the last argument."""
    base = tmp_path_factory.mktemp("dask_source")
    train_csv, _ = make_dataset(base, num_classes=3, per_class=4, val_per_class=1, spec=SPEC)
    labels = write_labels(class_names(e.label for e in read_csv(train_csv)),
                          base / "records" / schema.LABELS_NAME)

    def args(out: Path) -> list[str]:
        return ["--csv", str(train_csv), "--videos", str(base / "videos"), "--labels", str(labels),
                "--short-side", "0", "--videos-per-shard", "2", "--page-mb", "1", "--out", str(out)]

    local = base / "records" / "local"
    assert run_cli(convert.build_parser(), convert.main, args(local) + ["--backend", "loky"]) == 0
    return {"args": args, "local": local, "records": base / "records"}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory) -> Client:
    """`dask scheduler` and two `dask worker`s (one process, one thread each, under a nanny that
    starts a new process when one is killed) on 127.0.0.1, in dask's default configuration; a
    client to it. As README's workers on other machines, they run outside the checkout with no
    PYTHONPATH and import the project installed in the venv; they hold fake OBS credentials. Every
    process is stopped at the end, whatever happened."""
    logs = tmp_path_factory.mktemp("dask_cluster")
    env = {k: v for k, v in os.environ.items()
           if k not in (cluster.ENV_SCHEDULER, "PYTHONPATH") and not k.startswith("DASK_")}
    env.update(OBS_ACCESS_KEY_ID=KEY_ID, OBS_SECRET_ACCESS_KEY=SECRET)
    address_file = logs / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([str(DASK), *args], env=env, cwd=logs, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(address_file))
        deadline = time.monotonic() + 60
        while not address_file.is_file():
            assert procs[0].poll() is None and time.monotonic() < deadline, \
                (logs / "scheduler.log").read_text()
            time.sleep(0.1)
        for i in range(2):
            start(f"worker{i}", "worker", "--scheduler-file", str(address_file), "--host", "127.0.0.1",
                  "--nworkers", "1", "--nthreads", "1", "--memory-limit", "2GB", "--no-dashboard")
        with Client(json.loads(address_file.read_text())["address"], set_as_default=False) as client:
            yield client
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGCONT)     # a worker a failed test left frozen
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(dask_cluster) -> dict[str, int]:
    """The cluster's two workers, ready (a killed one's successor included), MindSpore imported
    by each: worker address -> pid of its process (not its nanny's)."""
    dask_cluster.wait_for_workers(2, timeout=120)
    dask_cluster.run(importlib.import_module, "datatools.convert")
    pids = dask_cluster.run(os.getpid)
    assert len(pids) == 2, pids
    return pids


@pytest.fixture
def no_retry(dask_cluster) -> None:
    """The scheduler gives up on a task at its first dead worker (allowed-failures 0, as a cluster
    configured so would), for this test only. (Lambdas: pickled by value, the scheduler need not
    import this module.)"""
    before = dask_cluster.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    dask_cluster.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    yield
    dask_cluster.run_on_scheduler(lambda count, dask_scheduler: setattr(dask_scheduler, "allowed_failures",
                                                                         count), before)


def _same_split(split: Path, reference: Path) -> None:
    """Rows, settings and shard digests as the reference's, and every file byte-identical."""
    assert read_rows(split) == read_rows(reference)
    assert read_digests(read_manifest(split)) == read_digests(read_manifest(reference))
    files = sorted(p.name for p in split.iterdir())
    assert files == sorted(p.name for p in reference.iterdir())
    for name in files:
        assert (split / name).read_bytes() == (reference / name).read_bytes(), name


def test_cluster_run_equals_the_local_run_and_with_upload_pulls_back_identical(source, dask_cluster, bucket,
                                                                               tmp_path, capsys):
    out, url = source["records"] / "cluster", f"obs://{bucket}/k/train"
    address = dask_cluster.scheduler.address
    code = run_cli(convert.build_parser(), convert.main,
                   source["args"](out) + ["--scheduler", address, "--upload", url])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"shards: {SHARDS} converted" in captured.out
    assert KEY_ID not in captured.out + captured.err and SECRET not in captured.out + captured.err
    _same_split(out, source["local"])

    pulled = tmp_path / "k"
    result = sync.sync(f"obs://{bucket}/k", str(pulled))
    assert result.inspected == [pulled / "train"]
    _same_split(pulled / "train", out)
    assert (pulled / "labels.txt").read_bytes() == (source["records"] / "labels.txt").read_bytes()


@pytest.mark.parametrize("how", ["environment", "local cluster"])
def test_backend_dask_takes_the_scheduler_from_the_environment_or_starts_a_local_cluster(
        source, dask_cluster, monkeypatch, caplog, how):
    caplog.set_level(logging.INFO, logger=convert.__name__)
    address = dask_cluster.scheduler.address
    if how == "environment":
        monkeypatch.setenv(cluster.ENV_SCHEDULER, address)
    else:
        monkeypatch.delenv(cluster.ENV_SCHEDULER, raising=False)
    out = source["records"] / how.replace(" ", "-")
    argv = source["args"](out) + ["--backend", "dask", "--workers", "1"]
    assert run_cli(convert.build_parser(), convert.main, argv) == 0
    assert "on the dask cluster at tcp://127.0.0.1:" in caplog.text
    assert (f"on the dask cluster at {address} " in caplog.text) == (how == "environment")
    _same_split(out, source["local"])


def test_a_worker_killed_mid_shard_has_its_task_retried_on_another_worker(source, dask_cluster, workers,
                                                                      capsys):
    out = source["records"] / "retried"
    argv = source["args"](out) + ["--scheduler", dask_cluster.scheduler.address]
    with MidShardKill(out, workers, after_done=0) as kill:
        code = run_cli(convert.build_parser(), convert.main, argv)
    captured = capsys.readouterr()
    assert kill.shard is not None, "no worker was caught mid-shard"
    assert code == 0, captured.err
    assert f"shards: {SHARDS} converted" in captured.out
    _same_split(out, source["local"])               # the killed shard redone whole


def test_a_worker_killed_mid_shard_without_retries_stops_the_run_with_one_line_and_the_rerun_resumes(
        source, dask_cluster, workers, no_retry, capsys):
    out = source["records"] / "killed"
    argv = source["args"](out) + ["--scheduler", dask_cluster.scheduler.address]
    with MidShardKill(out, workers, after_done=1) as kill:
        code = run_cli(convert.build_parser(), convert.main, argv)
    err = capsys.readouterr().err
    assert kill.shard is not None, "no worker was caught mid-shard"
    assert code == 1 and err.count("\n") == 1, err
    # the killed shard, or another the scheduler had already queued on that worker
    assert re.match(rf"stopped: dask workers died 1 time\(s\) running shard \d+ \(the last: {kill.worker}\); ", err)
    running = dask_cluster.run(lambda dask_worker: sum(ts.state in cluster.EXECUTING
                                                       for ts in dask_worker.state.tasks.values()))
    assert not any(running.values()), f"tasks of the stopped run still run: {running}"
    left = sorted(p.name for p in out.iterdir())
    done = [n for n in left if n.endswith(".done.json")]
    assert 1 <= len(done) < SHARDS and LOCK_NAME not in left
    assert len(left) == 3 * len(done), f"partial shard files left: {left}"   # record, .db, marker

    code = run_cli(convert.build_parser(), convert.main, argv)
    assert code == 0 and f"{len(done)} kept from an earlier run" in capsys.readouterr().out
    _same_split(out, source["local"])


def _process_state(pid: int) -> str:
    """R, S, T (stopped), ... from /proc (the field after the parenthesised command name)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _signal_and_wait(pid: int, sig: int, stopped: bool) -> None:
    """Send ``sig`` and return once the process is stopped (or running again), as /proc says:
    a signal is delivered after kill() returns."""
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while (_process_state(pid) in "Tt") != stopped:
        assert time.monotonic() < deadline, f"process {pid} not {'stopped' if stopped else 'running'}"
        time.sleep(0.001)


@dataclass
class MidShardKill:
    """SIGKILLs a dask worker process while it converts a shard, without depending on timing.

    On entry the second worker is frozen (SIGSTOP): it holds tasks the scheduler gave it, so the
    run cannot end before the kill. A thread watches ``out``; once ``after_done`` shards are done
    and a shard's spool file (written from the shard's start until just before its done marker)
    is there, it freezes the first worker and looks again: a spool still there without its marker
    belongs to a shard that worker is converting and can no longer finish, so it is killed then,
    and the second worker goes on. ``shard`` and ``worker`` say what was killed. On exit the
    second worker is always running again.
    """

    out: Path
    workers: dict[str, int]
    after_done: int
    shard: int | None = None
    worker: str | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __enter__(self) -> "MidShardKill":
        (self._victim, victim_pid), (_, frozen_pid) = self.workers.items()
        self._victim_pid, self._frozen_pid = victim_pid, frozen_pid
        _signal_and_wait(frozen_pid, signal.SIGSTOP, stopped=True)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._resume_frozen()

    def _resume_frozen(self) -> None:
        if _process_state(self._frozen_pid) in "Tt":
            _signal_and_wait(self._frozen_pid, signal.SIGCONT, stopped=False)

    def _converting(self) -> list[ShardFiles]:
        if len(list(self.out.glob("*.done.json"))) < self.after_done:
            return []
        shards = [ShardFiles.of(self.out, shard_index(p.with_suffix(RECORD_SUFFIX)))
                  for p in self.out.glob("*.spool")]
        return [files for files in shards if files.spool.exists() and not files.done.exists()]

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self._converting():
                _signal_and_wait(self._victim_pid, signal.SIGSTOP, stopped=True)
                frozen_mid_shard = self._converting()
                if frozen_mid_shard:
                    os.kill(self._victim_pid, signal.SIGKILL)
                    self.shard = shard_index(frozen_mid_shard[0].record)
                    self.worker = self._victim
                    self._resume_frozen()
                    return
                _signal_and_wait(self._victim_pid, signal.SIGCONT, stopped=False)
            self._stop.wait(0.002)
        self._resume_frozen()      # never caught: let the run end (the test then fails)


def test_cluster_arguments_fail_with_one_line_before_touching_disk(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1)
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{free_port()}"   # nothing listens on it
    code = run_cli(convert.build_parser(), convert.main, source["args"](out) + ["--scheduler", address])
    assert (code, capsys.readouterr().err) == (
        2, f"error: cannot reach the dask scheduler at '{address}' within 1 s: check --scheduler / "
           f"${cluster.ENV_SCHEDULER}\n")
    code = run_cli(convert.build_parser(), convert.main, source["args"](out) + ["--scheduler", "h8786"])
    assert (code, capsys.readouterr().err) == (
        2, "error: --scheduler 'h8786': expected tcp://HOST:PORT, e.g. tcp://10.0.0.1:8786\n")
    code = run_cli(convert.build_parser(), convert.main,
                   source["args"](out) + ["--backend", "threading", "--scheduler", "tcp://h:8786"])
    assert (code, capsys.readouterr().err) == (
        2, "error: --scheduler tcp://h:8786 runs the tasks on a Dask cluster: use it with --backend "
           "dask, not --backend threading\n")
    assert not out.exists()
