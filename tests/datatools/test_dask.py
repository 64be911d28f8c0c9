"""datatools.convert on a real Dask cluster: a scheduler and two one-thread workers started with
the `dask` command on 127.0.0.1, as README's "Converting on a cluster" starts them on machines
sharing storage. The output is the local run's, byte for byte; --upload pushes from the workers;
a worker killed mid-run stops the run with one line and leaves no partial shard, and the same
command then resumes; a scheduler that cannot be reached is one line."""
from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dask.distributed import Client

from datatools import cluster, convert, schema, sync
from datatools.cli import run_cli
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import LOCK_NAME, read_digests, read_manifest, read_rows
from datatools.synth import SynthSpec, make_dataset
from tests.conftest import KEY_ID, SECRET

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"
# 3 classes x 4 videos of 16 frames at 160x120 (kept: an even width encodes repeatably), two per
# shard: 6 shards, so tasks are left to kill once the first is done.
SPEC = SynthSpec(num_frames=16, width=160, height=120)
SHARDS = 6


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
    """`dask scheduler` and two `dask worker`s (one process, one thread each) on 127.0.0.1; a
    client to it. The scheduler gives up on a task after one dead worker (allowed-failures 0), so
    a killed worker stops the run instead of being retried. Workers import this checkout and hold
    fake OBS credentials. Every process is stopped at the end, whatever happened."""
    logs = tmp_path_factory.mktemp("dask_cluster")
    env = {k: v for k, v in os.environ.items() if k != cluster.ENV_SCHEDULER}
    env.update(PYTHONPATH=str(REPO), OBS_ACCESS_KEY_ID=KEY_ID, OBS_SECRET_ACCESS_KEY=SECRET)
    address_file = logs / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str, **extra_env: str) -> None:
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([str(DASK), *args], env={**env, **extra_env}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(address_file), DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
        deadline = time.monotonic() + 60
        while not address_file.is_file():
            assert procs[0].poll() is None and time.monotonic() < deadline, \
                (logs / "scheduler.log").read_text()
            time.sleep(0.1)
        for i in range(2):
            start(f"worker{i}", "worker", "--scheduler-file", str(address_file), "--host", "127.0.0.1",
                  "--nworkers", "1", "--nthreads", "1", "--memory-limit", "2GB", "--no-dashboard")
        with Client(json.loads(address_file.read_text())["address"], set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            client.run(importlib.import_module, "datatools.convert")     # MindSpore: once, now
            yield client
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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


def test_a_worker_killed_mid_run_stops_it_with_one_line_and_the_rerun_resumes(source, dask_cluster, capsys):
    out = source["records"] / "killed"
    argv = source["args"](out) + ["--scheduler", dask_cluster.scheduler.address]
    killed: list[str] = []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(dask_cluster, out, killed), daemon=True)
    killer.start()
    code = run_cli(convert.build_parser(), convert.main, argv)
    killer.join()
    err = capsys.readouterr().err
    assert killed, "no worker was busy after the first shard: the run ended before the kill"
    assert code == 1 and err.count("\n") == 1, err
    running = dask_cluster.run(lambda dask_worker: sum(ts.state in cluster.EXECUTING
                                                       for ts in dask_worker.state.tasks.values()))
    assert not any(running.values()), f"tasks of the stopped run still run: {running}"
    assert err.startswith("stopped: dask workers died 1 time(s) running shard ") and killed[0] in err
    left = sorted(p.name for p in out.iterdir())
    done = [n for n in left if n.endswith(".done.json")]
    assert 1 <= len(done) < SHARDS and LOCK_NAME not in left
    assert len(left) == 3 * len(done), f"partial shard files left: {left}"   # record, .db, marker

    code = run_cli(convert.build_parser(), convert.main, argv)
    assert code == 0 and f"{len(done)} kept from an earlier run" in capsys.readouterr().out
    _same_split(out, source["local"])


def _kill_a_busy_worker(client: Client, out: Path, killed: list[str]) -> None:
    """Once a shard is done, SIGKILL a worker process that has shard tasks (not its nanny, which
    starts a new one); its address goes into ``killed``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(out.glob("*.done.json")):
        time.sleep(0.01)
    while time.monotonic() < deadline:
        busy = [worker for worker, keys in client.processing().items() if keys]
        if busy:
            os.kill(client.run(os.getpid, workers=busy[:1])[busy[0]], signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.01)


def test_cluster_arguments_fail_with_one_line_before_touching_disk(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 1)
    out = tmp_path / "out"
    with socket.socket() as s:             # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
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
